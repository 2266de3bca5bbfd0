/* Gauntlet leaderboard: sortable columns and row filters for every table.board (plain JS, no network).
   th[data-sort=num|text] sorts the tbody rows by the cell's data-value, else its text ("–"/empty last);
   input.board-filter, select.kind-filter and input.flagged-only (data-table = the table's id) hide rows.
   The rank column is never renumbered: it keeps the official rank. */
(function () {
  "use strict";
  function cellAt(row, col) { // the cell covering visual column col (colspans counted)
    for (var i = 0, at = 0; i < row.cells.length; i++) {
      at += row.cells[i].colSpan || 1;
      if (at > col) return row.cells[i];
    }
    return null;
  }
  function key(cell, num) {
    if (!cell) return null;
    var raw = (cell.hasAttribute("data-value") ? cell.getAttribute("data-value") : cell.textContent).trim();
    if (raw === "" || raw === "–" || raw === "-") return null;
    if (!num) return raw.toLowerCase();
    var v = parseFloat(raw);
    return isNaN(v) ? null : v;
  }
  function sortBy(table, th) {
    var num = th.getAttribute("data-sort") === "num", was = th.getAttribute("aria-sort");
    var dir = was ? (was === "ascending" ? -1 : 1) : (num ? -1 : 1);
    var col = 0, head = th.parentNode.cells;
    for (var i = 0; i < head.length && head[i] !== th; i++) col += head[i].colSpan || 1;
    Array.prototype.forEach.call(table.tHead.querySelectorAll("th[aria-sort]"), function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    Array.prototype.forEach.call(table.tBodies, function (body) {
      var rows = Array.prototype.slice.call(body.rows).map(function (r) {
        return { row: r, k: key(cellAt(r, col), num), pos: +r.getAttribute("data-pos") };
      });
      rows.sort(function (a, b) {
        if (a.k === null || b.k === null) return a.k === b.k ? a.pos - b.pos : (a.k === null ? 1 : -1);
        var c = num ? a.k - b.k : a.k.localeCompare(b.k, undefined, { numeric: true });
        return c ? dir * c : a.pos - b.pos;
      });
      rows.forEach(function (r) { body.appendChild(r.row); });
    });
  }
  function control(sel, id) { return document.querySelector(sel + '[data-table="' + id + '"]'); }
  function filter(table) {
    var box = control("input.board-filter", table.id), kind = control("select.kind-filter", table.id);
    var flagged = control("input.flagged-only", table.id);
    var q = box ? box.value.trim().toLowerCase() : "", k = kind ? kind.value : "";
    Array.prototype.forEach.call(table.tBodies, function (body) {
      Array.prototype.forEach.call(body.rows, function (r) {
        r.hidden = (q !== "" && r.textContent.toLowerCase().indexOf(q) < 0) ||
          (k !== "" && r.getAttribute("data-kind") !== k) ||
          (!!flagged && flagged.checked && r.getAttribute("data-unreliable") !== "1");
      });
    });
  }
  function init() {
    Array.prototype.forEach.call(document.querySelectorAll("table.board"), function (table) {
      Array.prototype.forEach.call(table.tBodies, function (body) {
        Array.prototype.forEach.call(body.rows, function (r, i) { r.setAttribute("data-pos", i); });
      });
      Array.prototype.forEach.call(table.querySelectorAll("thead th[data-sort]"), function (th) {
        th.tabIndex = 0;
        th.style.cursor = "pointer";
        th.addEventListener("click", function () { sortBy(table, th); });
        th.addEventListener("keydown", function (e) {
          if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th); }
        });
      });
      ["input.board-filter", "select.kind-filter", "input.flagged-only"].forEach(function (sel) {
        var el = table.id && control(sel, table.id);
        var ev = sel.indexOf("board-filter") >= 0 ? "input" : "change";
        if (el) el.addEventListener(ev, function () { filter(table); });
      });
      if (table.id) filter(table); // a browser may restore the controls' state on "back"
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
