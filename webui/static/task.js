// The task page: live answer preview, keyboard shortcuts, and a lease heartbeat.
(function () {
  "use strict";

  var labelForm = document.getElementById("label-form");
  var skipForm = document.getElementById("skip-form");
  var undoForm = document.getElementById("undo-form");
  var answer = document.getElementById("answer");
  var preview = document.getElementById("answer-preview");
  var own = document.getElementById("choice-own");
  var flag = document.getElementById("ambiguous");
  var sending = false;

  // One form post per page: a second key press while the first is in flight does nothing.
  [labelForm, skipForm, undoForm].forEach(function (form) {
    if (!form) { return; }
    form.addEventListener("submit", function (event) {
      if (sending) { event.preventDefault(); return; }
      sending = true;
      form.querySelectorAll("button").forEach(function (button) { button.disabled = true; });
      form.setAttribute("aria-busy", "true");
    });
  });

  function send(form) {
    if (!form || sending) { return; }
    if (typeof form.requestSubmit === "function") { form.requestSubmit(); } else { form.submit(); }
  }

  function isTyping(element) {
    if (!element || !element.tagName) { return false; }
    var tag = element.tagName.toLowerCase();
    if (tag === "textarea" || tag === "select" || element.isContentEditable) { return true; }
    if (tag !== "input") { return false; }
    return ["radio", "checkbox", "button", "submit", "reset", "hidden"].indexOf(element.type) < 0;
  }

  function updatePreview() {
    if (!answer || !preview) { return; }
    var tex = answer.value;
    if (!tex.trim()) { preview.textContent = ""; return; }
    if (!window.rewardhubMath || !window.rewardhubMath.renderInto(preview, tex, true)) {
      preview.textContent = tex;
    }
  }

  if (answer) {
    answer.addEventListener("input", function () {
      // Typing an answer means "my own answer", whatever was picked before.
      if (own && answer.value.trim()) { own.checked = true; }
      updatePreview();
    });
    updatePreview();
  }

  function pick(index) {
    var radio = document.getElementById("choice-" + index);
    if (!radio) { return false; }
    radio.checked = true;
    radio.focus();
    if (flag) { flag.checked = false; }
    return true;
  }

  document.addEventListener("keydown", function (event) {
    var key = event.key;
    if ((event.ctrlKey || event.metaKey) && key === "Enter") {
      event.preventDefault();
      send(labelForm);
      return;
    }
    if (isTyping(event.target)) {
      if (key === "Escape") { event.target.blur(); event.preventDefault(); }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) { return; }
    var handled = true;
    if (key === "s" || key === "S" || key === "Escape") {
      send(skipForm);
    } else if (key === "u" || key === "U") {
      send(undoForm);
    } else if (/^[1-9]$/.test(key)) {
      handled = pick(Number(key) - 1);
    } else if ((key === "a" || key === "A") && answer) {
      if (own) { own.checked = true; }
      if (flag) { flag.checked = false; }
      answer.focus();
    } else if ((key === "f" || key === "F") && flag) {
      flag.checked = !flag.checked;
      flag.focus();
    } else {
      handled = false;
    }
    if (handled) { event.preventDefault(); }
  });

  // Tells tests (and anything else watching) that the shortcuts are live.
  document.documentElement.setAttribute("data-shortcuts", "on");

  // Keep the reservation alive while the page is open (half the lease length between beats).
  var lease = document.getElementById("lease");
  if (lease && window.fetch) {
    var seconds = Math.max(5, Number(lease.getAttribute("data-lease-seconds")) / 2);
    var header = document.body.getAttribute("data-csrf-header");
    var timer = window.setInterval(function () {
      var headers = {};
      headers[header] = lease.getAttribute("data-csrf");
      window.fetch(lease.getAttribute("data-renew-url"), {method: "POST", headers: headers, credentials: "same-origin"})
        .then(function (response) {
          if (response.ok) { return response.json(); }
          throw new Error("status " + response.status);
        })
        .then(function (body) {
          var time = lease.querySelector("time");
          var at = new Date(body.lease_expires_at);
          time.setAttribute("datetime", body.lease_expires_at);
          time.textContent = at.toISOString().substring(11, 19) + " UTC";
        })
        .catch(function () {
          window.clearInterval(timer);
          lease.className = "banner warn";
          lease.setAttribute("role", "alert");
          lease.textContent = "Your reservation of this task could not be renewed; it may have gone back to the " +
            "queue. Reload the page before answering.";
        });
    }, seconds * 1000);
  }
})();
