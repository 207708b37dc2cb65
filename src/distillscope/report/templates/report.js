// distillscope report: teacher/method picker, token colouring and the hover tooltip.
// Model text reaches the page only through textContent (never innerHTML).
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("ds-data").textContent);
  var T = data.teachers, M = data.methods;
  var tSel = document.getElementById("ds-teacher");
  var mSel = document.getElementById("ds-method");
  var tip = document.getElementById("tip");
  if (!tSel || !mSel || !tip) {  // a run without representative paths: nothing to colour
    document.documentElement.setAttribute("data-ready", "1");
    return;
  }
  var STOPS = [[-1, [178, 24, 43]], [-0.5, [239, 138, 98]], [0, [247, 247, 247]],
               [0.5, [103, 169, 207]], [1, [33, 102, 172]]];

  function colour(a) {
    a = Math.max(-1, Math.min(1, a));
    for (var i = 1; i < STOPS.length; i++) {
      if (a <= STOPS[i][0]) {
        var f = (a - STOPS[i - 1][0]) / (STOPS[i][0] - STOPS[i - 1][0]);
        var c = STOPS[i - 1][1].map(function (v, k) {
          return Math.round(v + f * (STOPS[i][1][k] - v));
        });
        return "rgb(" + c.join(",") + ")";
      }
    }
    return "rgb(33,102,172)";
  }
  function fmt(x, d, signed) {
    if (x === null || x === undefined || !isFinite(x)) return "n/a";
    var s = Number(x).toFixed(d);
    return signed && x >= 0 ? "+" + s : s;
  }
  function combo() { return tSel.selectedIndex * M.length + mSel.selectedIndex; }

  function paint() {
    var k = combo();
    document.querySelectorAll("section.path").forEach(function (sec) {
      var nodes = data.paths[+sec.dataset.p].n;
      var sum = 0, cnt = 0;
      sec.querySelectorAll(".tk.dp").forEach(function (el) {
        var a = nodes[+el.dataset.n][4][k];
        if (a === null || a === undefined) {
          el.style.background = "repeating-linear-gradient(45deg,#c8c8c8 0 2px,#fff 2px 5px)";
          el.style.color = "";
        } else {
          el.style.background = colour(a);
          el.style.color = Math.abs(a) > 0.65 ? "#fff" : "";
          sum += a; cnt += 1;
        }
      });
      var pm = sec.querySelector(".pm");
      if (pm) pm.textContent = cnt ? fmt(sum / cnt, 3, true) + " (" + cnt + " scored)" : "n/a";
    });
    document.querySelectorAll(".ds-current").forEach(function (el) {
      el.textContent = T[tSel.selectedIndex] + " · " + M[mSel.selectedIndex];
    });
  }

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function show(ev) {
    var t = ev.target.closest ? ev.target.closest(".tk.dp") : null;
    if (!t) { tip.style.display = "none"; return; }
    var sec = t.closest("section.path");
    var node = data.paths[+sec.dataset.p].n[+t.dataset.n];
    var ti = tSel.selectedIndex, teacher = T[ti];
    tip.replaceChildren();
    tip.appendChild(el("div", "depth " + node[0] + " · token " + JSON.stringify(node[6]), "h"));
    tip.appendChild(el("div", "align(" + teacher + ", " + M[mSel.selectedIndex] + ") = " +
      fmt(node[4][combo()], 3, true)));
    tip.appendChild(el("div", "SR range " + fmt(node[1], 3) + " · visits over S_u " + node[2] +
      " · |S_u| " + node[3]));
    var tab = el("table"), head = el("tr");
    ["child (S_u)", "P\u0302 succ", "visits", "P_\u03b8", "P_te (" + teacher + ")"].forEach(function (h) {
      head.appendChild(el("th", h));
    });
    tab.appendChild(head);
    node[5].forEach(function (c) {
      var tr = el("tr");
      tr.appendChild(el("td", (c[5] ? "\u25b8 " : "  ") + JSON.stringify(c[0])));
      tr.appendChild(el("td", fmt(c[1], 3)));
      tr.appendChild(el("td", String(c[2])));
      tr.appendChild(el("td", fmt(c[3], 3)));
      tr.appendChild(el("td", fmt(c[4][ti], 3)));
      tab.appendChild(tr);
    });
    tip.appendChild(tab);
    tip.appendChild(el("div", "\u25b8 = the path's own token; probabilities are full-vocabulary."));
    tip.style.display = "block";
    var x = ev.clientX + 14, y = ev.clientY + 14, r = tip.getBoundingClientRect();
    if (x + r.width > window.innerWidth - 8) x = Math.max(8, ev.clientX - r.width - 14);
    if (y + r.height > window.innerHeight - 8) y = Math.max(8, ev.clientY - r.height - 14);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }

  function fromHash() {
    var h = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    var t = T.indexOf(h.get("teacher")), m = M.indexOf(h.get("method"));
    if (t >= 0) tSel.selectedIndex = t;
    if (m >= 0) mSel.selectedIndex = m;
  }

  tSel.addEventListener("change", paint);
  mSel.addEventListener("change", paint);
  document.addEventListener("mouseover", show);
  window.addEventListener("hashchange", function () { fromHash(); paint(); });
  fromHash();
  paint();
  document.documentElement.setAttribute("data-ready", "1");
})();
