/* Backstop admin console: the little behaviour htmx attributes do not cover. */
(function () {
  "use strict";

  function toast(text) {
    var box = document.getElementById("toast");
    if (!box) return;
    box.textContent = text;  // textContent: server text is never parsed as HTML here
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { box.hidden = true; }, 8000);
  }

  // Failed htmx requests (401, 403, 409, CSRF refusals...) explain themselves in a toast.
  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    var text = xhr.responseText || "";
    try { text = JSON.parse(text).message || text; } catch (e) {
      var doc = new DOMParser().parseFromString(text, "text/html");
      text = (doc.body && doc.body.textContent || "").trim();
    }
    toast("Request failed (" + xhr.status + "): " + (text || xhr.statusText));
  });
  document.addEventListener("htmx:sendError", function () { toast("The server cannot be reached."); });

  // "Hide details" clears the details cell; "all on page" toggles every row checkbox.
  document.addEventListener("click", function (event) {
    var close = event.target.closest("[data-close-details]");
    if (close) close.closest("td").innerHTML = "";
  });
  document.addEventListener("change", function (event) {
    if (event.target.id !== "select-all") return;
    document.querySelectorAll('input[name="ids"][form="bulk-form"]').forEach(function (box) {
      box.checked = event.target.checked;
    });
  });

  // The trend chart: drawn once, then updated whenever its data partial is swapped in.
  var chart = null;
  function drawTrend() {
    var canvas = document.getElementById("trend-chart");
    var source = document.getElementById("trend-data");
    if (!canvas || !source || typeof Chart === "undefined") return;
    var data = JSON.parse(source.textContent);
    var labels = data.labels.map(function (label) { return label.slice(5); });
    if (chart) {
      chart.data.labels = labels;
      chart.data.datasets[0].data = data.successes;
      chart.data.datasets[1].data = data.failures;
      chart.update("none");
      return;
    }
    chart = new Chart(canvas, {
      type: "bar",
      data: {
        labels: labels,
        datasets: [
          { label: "successes", data: data.successes, backgroundColor: "#2f9e6b", stack: "a" },
          { label: "failures", data: data.failures, backgroundColor: "#d64545", stack: "a" }
        ]
      },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        scales: { x: { stacked: true, ticks: { maxTicksLimit: 12 } }, y: { stacked: true, beginAtZero: true } },
        plugins: { legend: { position: "bottom" } }
      }
    });
  }
  document.addEventListener("DOMContentLoaded", drawTrend);
  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "health-trend") drawTrend();
  });
})();
