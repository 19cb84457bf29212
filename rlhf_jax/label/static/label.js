// Page behaviour of the labelling app: ranking by keyboard and drag, span marking by selection,
// time on task. Plain DOM, no libraries; the forms post without it (ranking: the shown order).
"use strict";
(function () {
  const form = document.getElementById("task-form");
  if (!form) return;
  const started = Date.now();
  form.addEventListener("submit", function () {
    const s = document.getElementById("seconds");
    if (s) s.value = ((Date.now() - started) / 1000).toFixed(1);
    // a second click posts nothing new; the server is idempotent by client_id anyway
    const b = document.getElementById("submit");
    if (b) setTimeout(function () { b.disabled = true; }, 0);
  });

  // ---- ranking: <ol id="ranking"> of li.response[data-slot]; li.tied = same rank as the one above
  const list = document.getElementById("ranking");
  if (list) {
    const out = document.getElementById("ranks-json");
    const items = function () { return Array.from(list.querySelectorAll("li.response")); };
    const sync = function () {
      const lis = items();
      const ranks = new Array(lis.length).fill(0);
      let rank = -1;
      lis.forEach(function (li, pos) {
        if (pos === 0) li.classList.remove("tied");
        if (!li.classList.contains("tied")) rank += 1;
        ranks[Number(li.dataset.slot)] = rank;
        li.setAttribute("aria-label", "rank " + (rank + 1));
        li.dataset.rank = String(rank);
        li.dataset.rankLabel = String(rank + 1);  // shown by the CSS: tied responses share a number
      });
      out.value = JSON.stringify(ranks);
    };
    list.addEventListener("keydown", function (e) {
      const li = e.target.closest("li.response");
      if (!li) return;
      if (e.key === "ArrowUp" && li.previousElementSibling) {
        list.insertBefore(li, li.previousElementSibling);
      } else if (e.key === "ArrowDown" && li.nextElementSibling) {
        list.insertBefore(li.nextElementSibling, li);
      } else if (e.key === "t" || e.key === "T") {
        li.classList.toggle("tied");
      } else {
        return;
      }
      e.preventDefault();
      li.focus();
      sync();
    });
    let dragged = null;
    list.addEventListener("dragstart", function (e) {
      dragged = e.target.closest("li.response");
      if (!dragged) return;
      dragged.classList.add("dragging");
      e.dataTransfer.effectAllowed = "move";
      e.dataTransfer.setData("text/plain", dragged.dataset.slot);
    });
    list.addEventListener("dragover", function (e) {
      if (!dragged) return;
      e.preventDefault();
      const over = e.target.closest("li.response");
      if (!over || over === dragged) return;
      const box = over.getBoundingClientRect();
      const after = e.clientY > box.top + box.height / 2;
      list.insertBefore(dragged, after ? over.nextElementSibling : over);
    });
    list.addEventListener("drop", function (e) { e.preventDefault(); sync(); });
    list.addEventListener("dragend", function () {
      if (dragged) dragged.classList.remove("dragging");
      dragged = null;
      sync();
    });
    sync();
  }

  // ---- spans: offsets in code points (as Python counts) into #response-text
  const text = document.getElementById("response-text");
  const add = document.getElementById("add-span");
  const spansOut = document.getElementById("spans-json");
  if (text && add && spansOut) {
    const spansList = document.getElementById("spans");
    const category = document.getElementById("category");
    const spans = [];
    const full = text.textContent;
    const cp = function (s) { return Array.from(s).length; };
    const error = document.getElementById("error");
    const say = function (msg) { error.textContent = msg; error.hidden = !msg; };
    const render = function () {
      spansOut.value = JSON.stringify(spans);
      spansList.replaceChildren();
      spans.forEach(function (s, i) {
        const li = document.createElement("li");
        li.className = "span";
        li.dataset.start = s.start; li.dataset.end = s.end;
        const quote = document.createElement("q");
        quote.textContent = Array.from(full).slice(s.start, s.end).join("");
        const cat = document.createElement("span");
        cat.className = "category"; cat.textContent = " " + s.category + " ";
        const rm = document.createElement("button");
        rm.type = "button"; rm.className = "remove"; rm.textContent = "remove";
        rm.addEventListener("click", function () { spans.splice(i, 1); render(); });
        li.append(quote, cat, rm);
        spansList.append(li);
      });
    };
    add.addEventListener("click", function () {
      const sel = window.getSelection();
      if (!sel || sel.rangeCount === 0 || sel.isCollapsed) { say("spans: select some text in the response first"); return; }
      const range = sel.getRangeAt(0);
      if (!text.contains(range.startContainer) || !text.contains(range.endContainer)) {
        say("spans: the selection must lie inside the response"); return;
      }
      const pre = document.createRange();
      pre.selectNodeContents(text);
      pre.setEnd(range.startContainer, range.startOffset);
      const start = cp(pre.toString());
      const end = start + cp(range.toString());
      if (end <= start) { say("spans: empty selection"); return; }
      if (spans.some(function (s) { return start < s.end && s.start < end; })) {
        say("spans: overlaps a span already marked"); return;
      }
      spans.push({start: start, end: end, category: category.value});
      spans.sort(function (a, b) { return a.start - b.start; });
      say("");
      sel.removeAllRanges();
      render();
    });
    render();
  }
})();
