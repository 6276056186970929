// The task page: live answer preview, keyboard shortcuts, the lease's time left, and a lease heartbeat.
(function () {
  "use strict";

  var labelForm = document.getElementById("label-form");
  var skipForm = document.getElementById("skip-form");
  var laterForm = document.getElementById("later-form");
  var undoForm = document.getElementById("undo-form");
  var answer = document.getElementById("answer");
  var preview = document.getElementById("answer-preview");
  var own = document.getElementById("choice-own");
  var flag = document.getElementById("ambiguous");
  var sending = false;

  // One form post per page: a second key press while the first is in flight does nothing.
  [labelForm, skipForm, laterForm, undoForm, document.getElementById("confirm-guidelines-form")].forEach(function (form) {
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

  // The label schema's questions (webui/templates/questions.html): number keys act on the question that
  // has the focus, else on the first question that takes numbers; A/B/T on a preference pair.
  var questions = Array.prototype.slice.call(document.querySelectorAll(".question"));
  var NUMBERED = ["math_answer", "single_label", "multi_label", "rating", "ranking"];

  function focusedQuestion() {
    var element = document.activeElement;
    return element && element.closest ? element.closest(".question") : null;
  }

  function questionFor(types) {
    var focused = focusedQuestion();
    if (focused && types.indexOf(focused.getAttribute("data-type")) >= 0) { return focused; }
    for (var i = 0; i < questions.length; i++) {
      if (types.indexOf(questions[i].getAttribute("data-type")) >= 0) { return questions[i]; }
    }
    return null;
  }

  function numberKey(index) {
    var question = questionFor(NUMBERED);
    if (!question) { return false; }
    var type = question.getAttribute("data-type");
    if (type === "math_answer") { return pick(index); }
    if (type === "ranking") {
      var item = question.querySelectorAll(".ranking li")[index];
      if (!item) { return false; }
      item.focus();
      return true;
    }
    var inputs = question.querySelectorAll(type === "multi_label" ? "input[type=checkbox]" : "input[type=radio]");
    var input = inputs[index];
    if (!input) { return false; }
    input.checked = type === "multi_label" ? !input.checked : true;
    input.focus();
    return true;
  }

  function prefer(value, strict) {
    var question = strict ? focusedQuestion() : questionFor(["preference_pair"]);
    if (!question || question.getAttribute("data-type") !== "preference_pair") { return false; }
    var radio = question.querySelector("input[type=radio][value='" + value + "']");
    if (!radio) { return false; }
    radio.checked = true;
    radio.focus();
    return true;
  }

  // Rankings: the hidden field holds the order (item indexes, best first); ↑/↓ move the focused item.
  function syncRanking(list) {
    var input = document.getElementById(list.getAttribute("data-input"));
    var order = Array.prototype.map.call(list.querySelectorAll("li"), function (li) {
      return li.getAttribute("data-index");
    });
    input.value = order.join(",");
  }

  Array.prototype.forEach.call(document.querySelectorAll(".ranking"), function (list) {
    var input = document.getElementById(list.getAttribute("data-input"));
    var wanted = (input.value || "").split(",");
    wanted.forEach(function (index) {  // a refused form comes back in the order it was sent
      var li = list.querySelector("li[data-index='" + index + "']");
      if (li) { list.appendChild(li); }
    });
    syncRanking(list);
  });

  function moveItem(li, up) {
    var list = li.parentNode;
    var other = up ? li.previousElementSibling : li.nextElementSibling;
    if (!other) { return; }
    if (up) { list.insertBefore(li, other); } else { list.insertBefore(other, li); }
    li.focus();
    syncRanking(list);
  }

  document.addEventListener("keydown", function (event) {
    var key = event.key;
    if ((event.ctrlKey || event.metaKey) && key === "Enter") {
      event.preventDefault();
      send(labelForm);
      return;
    }
    if (isTyping(event.target)) {
      // Esc only leaves the text box; it never skips (a stray Esc used to lose the task).
      if (key === "Escape") { event.target.blur(); event.preventDefault(); }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) { return; }
    var target = event.target;
    if ((key === "ArrowUp" || key === "ArrowDown") && target && target.closest && target.closest(".ranking")
        && target.tagName.toLowerCase() === "li") {
      moveItem(target, key === "ArrowUp");
      event.preventDefault();
      return;
    }
    var lower = key.length === 1 ? key.toLowerCase() : key;
    // A on a focused pair (or with no math answer in the form) is "A is better"; B and T always the pair's.
    if ((lower === "a" && (prefer("A", true) || (!answer && prefer("A", false))))
        || (lower === "b" && !event.shiftKey && prefer("B", false)) || (lower === "t" && prefer("tie", false))) {
      event.preventDefault();
      return;
    }
    var handled = true;
    if (key === "l" || key === "L") {
      send(laterForm);
    } else if (key === "N" && event.shiftKey) {
      send(skipForm);  // "never show again" is permanent, hence Shift
    } else if (key === "u" || key === "U") {
      send(undoForm);
    } else if (/^[1-9]$/.test(key)) {
      handled = numberKey(Number(key) - 1);
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

  // The lease as time left ("expires in 9 min"), from the ISO time in the page; the ISO time stays in
  // the title. Counted against this browser's clock, refreshed every 15 s.
  var lease = document.getElementById("lease");

  function relative(ms) {
    if (ms <= 0) { return "expired"; }
    if (ms < 60000) { return "expires in less than a minute"; }
    var minutes = Math.round(ms / 60000);
    if (minutes < 120) { return "expires in " + minutes + " min"; }
    return "expires in " + Math.round(minutes / 60) + " h";
  }

  function showLeft() {
    var time = lease && lease.querySelector("time");
    if (!time) { return; }
    var at = Date.parse(time.getAttribute("datetime"));
    if (isNaN(at)) { return; }
    time.textContent = relative(at - Date.now());
  }

  if (lease) {
    showLeft();
    window.setInterval(showLeft, 15000);
  }

  // Keep the reservation alive while the page is open (half the lease length between beats).
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
          time.setAttribute("datetime", body.lease_expires_at);
          time.setAttribute("title", body.lease_expires_at);
          showLeft();
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
