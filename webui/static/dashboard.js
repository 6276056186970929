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
