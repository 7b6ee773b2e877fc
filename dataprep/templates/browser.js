// Record browser: renders the records embedded as JSON in #browser-data. Every piece of data goes
// into the page through textContent or a text node, never innerHTML: the data is untrusted.
(function () {
  "use strict";
  var PAGE = 20;
  var data = JSON.parse(document.getElementById("browser-data").textContent);
  var recs = data.records, page = 0, shown = recs;
  var byId = {};
  recs.forEach(function (r) {
    if (r.id && ["train", "dev", "test"].indexOf(r.k) >= 0) byId[r.id] = r;
  });
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  var FACETS = ["k", "label", "reason", "op"];
  FACETS.forEach(function (f) {
    var sel = document.getElementById("f-" + f);
    var counts = data.facets[f] || {};
    Object.keys(counts).forEach(function (v) {
      var o = el("option", null, (v === "" ? "(none)" : v) + " (" + counts[v] + ")");
      o.value = v;
      sel.appendChild(o);
    });
    sel.addEventListener("change", apply);
  });
  document.getElementById("f-q").addEventListener("input", apply);
  document.getElementById("b-prev").addEventListener("click", function () { go(page - 1); });
  document.getElementById("b-next").addEventListener("click", function () { go(page + 1); });

  function matches(r, q) {
    if (!q) return true;
    if ((r.id || "").indexOf(q) >= 0 || (r.raw || "").indexOf(q) >= 0) return true;
    return (r.m || []).some(function (m) { return (m.c || "").indexOf(q) >= 0; });
  }
  function apply() {
    var want = {};
    FACETS.forEach(function (f) { want[f] = document.getElementById("f-" + f).value; });
    var q = document.getElementById("f-q").value;
    shown = recs.filter(function (r) {
      return FACETS.every(function (f) { return want[f] === "*" || r[f] === want[f]; }) &&
        matches(r, q);
    });
    go(0);
  }
  function transcript(r) {
    var box = el("div", "chat");
    (r.m || []).forEach(function (m) {
      var b = el("div", "msg role-" + m.r.replace(/[^a-z]/g, ""));
      b.appendChild(el("span", "role", m.r + (m.n ? " · " + m.n : "")));
      if (m.c) b.appendChild(el("div", "text", m.c));
      if (m.p !== undefined) {
        b.appendChild(el("div", "sub", "call"));
        b.appendChild(el("pre", "call", m.p));
      }
      if (m.o !== undefined) {
        b.appendChild(el("div", "sub", "observation"));
        b.appendChild(el("pre", "obs", m.o));
      }
      box.appendChild(b);
    });
    return box;
  }
  function diffView(ops) {
    var d = el("div", "diff");
    ops.forEach(function (op) {
      d.appendChild(el(op[0] === "+" ? "ins" : op[0] === "-" ? "del" : "span", null, op[1]));
    });
    return d;
  }
  function card(r) {
    var c = el("div", "card kind-" + r.k);
    var h = el("div", "head");
    h.appendChild(el("span", "badge", r.k));
    h.appendChild(el("b", null, r.id || "(no id)"));
    if (r.label) h.appendChild(el("span", "tag", "label: " + r.label));
    if (r.op) h.appendChild(el("span", "tag", "op: " + r.op));
    if (r.reason) h.appendChild(el("span", "tag warnc", "reason: " + r.reason));
    h.appendChild(el("span", "muted", r.where || r.at));
    c.appendChild(h);
    if (r.msg) c.appendChild(el("div", "message", (r.stage ? r.stage + ": " : "") + r.msg));
    if (r.raw !== undefined) {
      c.appendChild(el("div", "sub", "raw input"));
      c.appendChild(el("pre", "raw", r.raw));
    }
    if (r.k === "discarded") {
      c.appendChild(el("div", "sub", "turn " + r.turn + ": original → discarded rewrite"));
      c.appendChild(diffView(r.diff || []));
      return c;
    }
    if (r.twin) {
      var cols = el("div", "cols");
      var left = el("div", "col"), right = el("div", "col");
      left.appendChild(el("div", "sub", "removed"));
      left.appendChild(transcript(r));
      right.appendChild(el("div", "sub", "kept twin " + r.twin));
      if (byId[r.twin]) right.appendChild(transcript(byId[r.twin]));
      else right.appendChild(el("div", "muted", "(not in the embedded sample)"));
      cols.appendChild(left);
      cols.appendChild(right);
      c.appendChild(cols);
      return c;
    }
    if (r.parent) {
      c.appendChild(el("div", "sub", "derived from " + r.parent + (r.diff ? "" :
        " (parent not in the embedded sample)")));
      (r.diff || []).forEach(function (d) {
        c.appendChild(el("div", "muted", "turn " + d.turn + " (" + d.role + ")"));
        c.appendChild(diffView(d.ops));
      });
      if (r.diff && !r.diff.length) c.appendChild(el("div", "muted", "identical text"));
    }
    if (r.m) c.appendChild(transcript(r));
    return c;
  }
  function go(p) {
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(Math.max(p, 0), pages - 1);
    var list = document.getElementById("b-list");
    while (list.firstChild) list.removeChild(list.firstChild);
    shown.slice(page * PAGE, page * PAGE + PAGE).forEach(function (r) {
      list.appendChild(card(r));
    });
    document.getElementById("b-page").textContent = "page " + (page + 1) + " of " + pages;
    document.getElementById("b-count").textContent = shown.length + " matching of " +
      recs.length + " embedded (" + data.total + " in the run)";
  }
  // "#records" shows the browser alone (a link on the page; also what the screenshots use).
  function only() {
    document.body.classList.toggle("records-only", location.hash === "#records");
  }
  window.addEventListener("hashchange", only);
  only();
  apply();
})();
