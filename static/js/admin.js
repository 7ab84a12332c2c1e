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

  // A 409 on a row action carries the row's true state: swap it in (its own sentence says why)
  // instead of leaving the stale row and pasting the response into a toast.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    if (xhr.status === 409 && xhr.getResponseHeader("X-Row-State")) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  // Loading feedback: the button that asked (or a form's submit buttons) is disabled and marked
  // busy until the answer arrives, and a bar at the top of the page shows that something is on
  // its way. Background polling (panels, live rows) stays silent.
  function actors(elt) {
    if (elt.matches("button, a")) return [elt];
    if (elt.tagName === "FORM") return Array.prototype.slice.call(elt.querySelectorAll("button"));
    return [];
  }
  var inFlight = 0;
  var focusedBeforeRequest = null;  // disabling a focused button blurs it: remember it for the swap
  document.addEventListener("htmx:beforeRequest", function (event) {
    var buttons = actors(event.detail.elt);
    if (!buttons.length) return;
    focusedBeforeRequest = document.activeElement;
    buttons.forEach(function (button) {
      button.setAttribute("aria-busy", "true");
      if (button.tagName === "BUTTON") button.disabled = true;
    });
    event.detail.elt.dataset.busy = "true";
    inFlight += 1;
    document.body.classList.add("busy");
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    var elt = event.detail.elt;
    if (elt.dataset.busy !== "true") return;
    delete elt.dataset.busy;
    actors(elt).forEach(function (button) {
      button.removeAttribute("aria-busy");
      if (button.tagName === "BUTTON" && !button.hasAttribute("data-needs-selection")) button.disabled = false;
    });
    syncSelection();
    inFlight = Math.max(0, inFlight - 1);
    if (!inFlight) document.body.classList.remove("busy");
  });

  // Polled panels never fight the operator: a panel with keyboard focus or an open form inside
  // is skipped this round, and a refresh keeps the scroll position of the panel's lists.
  function polled(elt) {
    return /\bevery\b/.test(elt.getAttribute("hx-trigger") || "") && elt.id;
  }
  document.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail.elt;
    // Only the health panels wait: a live row must keep polling (focus stays on it after Retry).
    if (!polled(elt) || elt.id.indexOf("health-") !== 0) return;
    var active = document.activeElement;
    if ((active && active !== document.body && elt.contains(active)) || elt.querySelector("details[open]")) {
      event.preventDefault();
    }
  });
  var scrolls = {};
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (!target || !polled(target)) return;
    scrolls[target.id] = Array.prototype.map.call(target.querySelectorAll(".scroll"), function (box) {
      return box.scrollTop;
    });
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail.target;
    if (!target || !polled(target)) return;
    var kept = scrolls[target.id] || [];
    target.querySelectorAll(".scroll").forEach(function (box, index) {
      if (kept[index]) box.scrollTop = kept[index];
    });
    updatedAt = Date.now();
    showUpdated();
  });
  // "updated N s ago" under the health panels.
  var updatedAt = Date.now();
  function showUpdated() {
    var label = document.getElementById("updated-ago");
    if (label) label.textContent = "updated " + Math.max(0, Math.round((Date.now() - updatedAt) / 1000)) + " s ago";
  }
  setInterval(showUpdated, 1000);

  // Keep keyboard focus where the action was when its part of the page is swapped: the same
  // button if it is still there, else the row's state (rows) or the name's controls (pauses).
  var refocus = null;
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target, active = document.activeElement;
    if (!active || active === document.body) active = focusedBeforeRequest;
    // Another swap (e.g. the stat cards refreshing) must not cancel a pending refocus.
    if (!target || !active || active === document.body || !target.contains(active)) return;
    var pause = active.closest("[data-pause]");
    refocus = {
      id: target.id,
      text: (active.textContent || "").trim(),
      pause: pause && pause.getAttribute("data-pause")
    };
  });
  document.addEventListener("htmx:afterSettle", function () {
    if (!refocus) return;
    var wanted = refocus;
    refocus = null;
    focusedBeforeRequest = null;
    var scope = document.getElementById(wanted.id);
    if (!scope) return;
    if (wanted.pause) {
      var item = scope.querySelector('[data-pause="' + CSS.escape(wanted.pause) + '"]');
      if (item) scope = item;
    }
    var same = Array.prototype.find.call(scope.querySelectorAll("button, summary, a"), function (elt) {
      return wanted.text && (elt.textContent || "").trim() === wanted.text;
    });
    var fallback = scope.querySelector(".state[tabindex], button, summary");
    (same || fallback || scope).focus();
  });

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

  // Trigger conditions that htmx would evaluate as code ([...] filters) cannot run under the
  // Content-Security-Policy (no eval), so they live here: before any request, htmx asks.
  document.addEventListener("htmx:confirm", function (event) {
    var trigger = event.detail.triggeringEvent;
    // Polls ("every Ns", no triggering event) and the refresh on becoming visible wait while the tab is hidden.
    if ((!trigger || trigger.type === "visibilitychange") && document.visibilityState !== "visible") {
      event.preventDefault();
      return;
    }
    // The filter form: a change of the search box was already sent by its own input trigger.
    var searchBoxes = ["q", "event-q", "customer-q"];
    if (trigger && trigger.type === "change" && trigger.target && searchBoxes.indexOf(trigger.target.id) >= 0) {
      event.preventDefault();
    }
  });

  // "Hide details" clears the details cell; "all on page" toggles every row checkbox.
  document.addEventListener("click", function (event) {
    var close = event.target.closest("[data-close-details]");
    if (!close) return;
    var group = close.closest("tbody");
    close.closest("td").innerHTML = "";
    // Focus goes back to the button that opened the details, not to the page body.
    var opener = group && group.querySelector("button[hx-get$='/details']");
    if (opener) opener.focus();
  });
  function selectedIds() {
    return document.querySelectorAll('input[name="ids"][form="bulk-form"]:checked');
  }
  // The "selected" actions are usable only with something selected, and say how many.
  function syncSelection() {
    var count = selectedIds().length;
    document.querySelectorAll("#bulk-form [data-needs-selection]").forEach(function (button) {
      button.disabled = count === 0;
    });
    var label = document.getElementById("selected-count");
    if (label) label.textContent = count + " selected";
  }
  document.addEventListener("change", function (event) {
    if (event.target.id === "select-all") {
      document.querySelectorAll('input[name="ids"][form="bulk-form"]').forEach(function (box) {
        box.checked = event.target.checked;
      });
    }
    if (event.target.id === "select-all" || event.target.name === "ids") syncSelection();
  });
  document.addEventListener("htmx:afterSettle", syncSelection);
  document.addEventListener("DOMContentLoaded", syncSelection);
  // The bulk confirmation names the action and the number of rows it applies to.
  document.addEventListener("htmx:confirm", function (event) {
    if (event.detail.elt.id !== "bulk-form") return;
    event.preventDefault();
    var submitter = event.detail.triggeringEvent && event.detail.triggeringEvent.submitter;
    var count = selectedIds().length;
    if (count === 0) return;
    var verb = submitter && submitter.value === "resolve" ? "Resolve" : "Retry";
    var question = verb + " the " + count + " selected operation" + (count === 1 ? "" : "s") + "?";
    if (window.confirm(question)) event.detail.issueRequest(true);
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
        scales: { x: { stacked: true, ticks: { maxTicksLimit: 12 }, title: { display: true, text: "hour (UTC)" } }, y: { stacked: true, beginAtZero: true } },
        plugins: { legend: { position: "bottom" } }
      }
    });
  }
  document.addEventListener("DOMContentLoaded", drawTrend);
  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "health-trend") drawTrend();
  });
})();
