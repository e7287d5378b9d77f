// The consoles' only script (progressive: every page works without it).
// - [data-refresh="S"] with an id: re-fetch this page every S seconds and
//   swap in the element with the same id (paused while the tab is hidden).
// - form[data-confirm]: ask before sending.  - [data-print]: print the page.
"use strict";
(function () {
  function refresh(el, seconds) {
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) { return; }
      busy = true;
      fetch(location.href, { credentials: "same-origin", headers: { "X-Refresh": el.id } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (!html) { return; }
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(el.id);
          if (fresh) { el.replaceWith(fresh); el = fresh; }
        })
        .catch(function () {})
        .finally(function () { busy = false; });
    }, seconds * 1000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh][id]").forEach(function (el) {
      var s = parseFloat(el.getAttribute("data-refresh"));
      if (s > 0) { refresh(el, s); }
    });
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (e) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { e.preventDefault(); }
      });
    });
    document.querySelectorAll("[data-print]").forEach(function (b) {
      b.addEventListener("click", function () { window.print(); });
    });
  });
})();
