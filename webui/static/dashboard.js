// Dashboard charts with Chart.js (served from webui/node_modules); the tables carry the same numbers.
(function () {
  "use strict";

  var source = document.getElementById("dashboard-data");
  if (!source) { return; }
  var projects = JSON.parse(source.textContent);

  if (typeof window.Chart === "undefined") {
    document.querySelectorAll("canvas.chart").forEach(function (canvas) { canvas.closest("figure").hidden = true; });
    if (!document.getElementById("vendor-missing")) {
      var banner = document.createElement("div");
      banner.className = "banner warn";
      banner.setAttribute("role", "alert");
      banner.textContent = "Chart.js did not load, so only the tables are shown. Install it with `npm ci --prefix webui`.";
      document.getElementById("main").prepend(banner);
    }
    return;
  }

  var COLORS = {used: "#3566c8", left: "#c9d3e6", open: "#e0a030", adjudication: "#c8503c", done: "#3a9a5b",
                submitted: "#3566c8", skipped: "#9aa3b3"};
  // No animation: the numbers are there at once (and screenshots are stable).
  window.Chart.defaults.animation = false;
  window.Chart.defaults.maintainAspectRatio = false;

  function canvas(projectId, kind) {
    return document.querySelector('canvas[data-chart="' + kind + '"][data-project="' + projectId + '"]');
  }

  projects.forEach(function (p) {
    var budget = canvas(p.id, "budget");
    if (budget) {
      new window.Chart(budget, {
        type: "doughnut",
        data: {labels: ["Used", "Left"],
               datasets: [{data: [p.budget.spent, p.budget.left], backgroundColor: [COLORS.used, COLORS.left]}]},
        options: {plugins: {legend: {position: "bottom"}}}
      });
    }
    var tasks = canvas(p.id, "tasks");
    if (tasks) {
      new window.Chart(tasks, {
        type: "bar",
        data: {labels: ["Open", "In adjudication", "Done"],
               datasets: [{label: "Tasks", data: [p.tasks_open, p.tasks_in_adjudication, p.tasks_done],
                           backgroundColor: [COLORS.open, COLORS.adjudication, COLORS.done]}]},
        options: {plugins: {legend: {display: false}}, scales: {y: {beginAtZero: true, ticks: {precision: 0}}}}
      });
    }
    var throughput = canvas(p.id, "throughput");
    if (throughput) {
      var names = p.annotators.map(function (a) { return a.username; });
      new window.Chart(throughput, {
        type: "bar",
        data: {labels: names, datasets: [
          {label: "Submitted", data: p.annotators.map(function (a) { return a.submitted; }),
           backgroundColor: COLORS.submitted},
          {label: "Skipped", data: p.annotators.map(function (a) { return a.skipped; }),
           backgroundColor: COLORS.skipped}]},
        options: {plugins: {legend: {position: "bottom"}}, scales: {y: {beginAtZero: true, ticks: {precision: 0}}}}
      });
    }
  });
})();

// Label quality per project card, read after the page is shown (GET …/dashboard/projects/{id}/quality).
// Every figure is written with its n; a figure with nothing to compare shows "—" and why, never 0.
(function () {
  "use strict";

  function cell(tag, text, className) {
    var element = document.createElement(tag);
    element.textContent = text;
    if (className) { element.className = className; }
    return element;
  }

  function coefficient(target, figure) {
    if (figure.value === null) {
      target.textContent = "—";
      target.title = figure.note || "";
    } else {
      target.textContent = figure.value.toFixed(3);
      target.title = "";
    }
    // Why a figure is missing is said in words beside its counts, not only in a tooltip.
    var detail = (figure.value === null && figure.note ? figure.note + "; " : "") +
      "n = " + figure.items + " tasks, " + figure.labels + " labels";
    target.appendChild(document.createElement("br"));
    target.appendChild(cell("span", detail, "muted small"));
  }

  function share(value, n) {
    return (value === null ? "—" : (100 * value).toFixed(1) + "%") + " (n = " + n + ")";
  }

  function fill(box, quality) {
    coefficient(box.querySelector('[data-field="alpha"]'), quality.krippendorff_alpha);
    coefficient(box.querySelector('[data-field="cohen"]'), quality.cohen_kappa);
    coefficient(box.querySelector('[data-field="fleiss"]'), quality.fleiss_kappa);
    var body = box.querySelector('[data-field="accuracy"]');
    body.textContent = "";
    if (!quality.annotators.length) {
      var none = body.insertRow();
      none.appendChild(cell("td", "No answers yet.", "muted")).colSpan = 4;
      return;
    }
    quality.annotators.forEach(function (a) {
      var row = body.insertRow();
      row.dataset.qualityAnnotator = a.username;  // not data-annotator: that names throughput rows
      row.appendChild(cell("th", a.username)).scope = "row";
      row.appendChild(cell("td", String(a.labels), "num"));
      row.appendChild(cell("td", share(a.gold_accuracy, a.gold_n), "num")).dataset.field = "gold";
      row.appendChild(cell("td", share(a.adjudicated_accuracy, a.adjudicated_n), "num")).dataset.field = "adjudicated";
    });
  }

  document.querySelectorAll("[data-quality-url]").forEach(function (box) {
    fetch(box.dataset.qualityUrl, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (quality) { fill(box, quality); })
      .catch(function () {
        box.querySelectorAll("dd").forEach(function (dd) { dd.textContent = "unavailable"; });
        var body = box.querySelector('[data-field="accuracy"]');
        body.textContent = "";
        body.insertRow().appendChild(cell("td", "Could not load the quality figures.", "muted")).colSpan = 4;
      });
  });
})();
