// ivy dashboard: the live overview. Server-sent events from /stream update the chart of
// completed and failed tasks per second, the queues and the workers, without a reload.
// Values are written with textContent only, never as HTML.
(function () {
  "use strict";
  var canvas = document.getElementById("chart");
  if (!canvas) { return; }
  var state = document.getElementById("live-state");
  var series = JSON.parse(canvas.getAttribute("data-series"));

  function draw() {
    var ctx = canvas.getContext("2d");
    var ratio = window.devicePixelRatio || 1;
    var w = canvas.clientWidth, h = canvas.clientHeight;
    canvas.width = w * ratio; canvas.height = h * ratio;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    var ok = series.succeeded, bad = series.failed, n = ok.length;
    var top = 1;
    for (var i = 0; i < n; i++) { top = Math.max(top, ok[i], bad[i]); }
    var left = 40, bottom = h - 20, plotH = bottom - 10, plotW = w - left - 10;
    ctx.strokeStyle = "#e3e6ea"; ctx.fillStyle = "#778"; ctx.font = "11px sans-serif";
    for (var g = 0; g <= 4; g++) {
      var y = bottom - plotH * g / 4;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + plotW, y); ctx.stroke();
      ctx.fillText(String(Math.round(top * g / 4 * 10) / 10), 2, y + 4);
    }
    var minutes = Math.round(n / 60);
    for (var m = 0; m <= minutes; m++) {
      var x = left + plotW * (1 - m * 60 / n);
      ctx.fillText(m === 0 ? "now" : "-" + m + " min", x - 14, h - 4);
    }
    function line(values, color) {
      ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
      for (var i = 0; i < n; i++) {
        var x = left + plotW * i / (n - 1), y = bottom - plotH * values[i] / top;
        if (i === 0) { ctx.moveTo(x, y); } else { ctx.lineTo(x, y); }
      }
      ctx.stroke();
    }
    line(ok, "#2e8b57");
    line(bad, "#c0392b");
  }

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "?" : String(text);
    if (cls) { td.className = cls; }
    row.appendChild(td);
    return td;
  }

  function dash(value) { return value === null || value === undefined ? "-" : String(value); }

  function when(stamp) {
    if (typeof stamp !== "number") { return "-"; }
    return new Date(stamp * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function fill(id, rows, empty, columns, build) {
    var body = document.getElementById(id);
    if (!body) { return; }
    var fresh = document.createElement("tbody");
    fresh.id = id;
    if (!rows.length) {
      var tr = fresh.insertRow();
      cell(tr, empty, "muted").colSpan = columns;
    }
    rows.forEach(function (item) { build(fresh.insertRow(), item); });
    body.parentNode.replaceChild(fresh, body);
  }

  function hidden(form, name, value) {
    var input = document.createElement("input");
    input.type = "hidden"; input.name = name; input.value = value;
    form.appendChild(input);
  }

  // the queue's state, and a form that pauses or resumes it (as the page's own forms do)
  function pauseForm(td, root, name, paused) {
    var table = document.getElementById("queue-table");
    var form = document.createElement("form");
    form.method = "post";
    form.action = root + "/queues/" + (paused ? "resume" : "pause");
    hidden(form, table.getAttribute("data-csrf-field"), table.getAttribute("data-csrf"));
    hidden(form, "queue", name);
    if (paused) {
      var state = document.createElement("span");
      state.className = "paused"; state.textContent = "paused";
      form.appendChild(state);
    } else {
      form.appendChild(document.createTextNode("active"));
    }
    form.appendChild(document.createTextNode(" "));
    var button = document.createElement("button");
    button.type = "submit"; button.textContent = paused ? "Resume" : "Pause";
    form.appendChild(button);
    td.appendChild(form);
  }

  function queues(list, paused, canPause) {
    var root = canvas.getAttribute("data-stream").replace(/\/stream$/, "");
    fill("queues", list, "No queues known: name them with ivy dashboard --queue NAME.", 5,
      function (tr, q) {
        cell(tr, q.name);
        cell(tr, q.size, "num");
        cell(tr, q.dead, "num");
        var state = cell(tr, "");
        if (canPause) {
          pauseForm(state, root, q.name, paused.indexOf(q.name) >= 0);
        } else {
          state.textContent = "-"; state.className = "muted";
        }
        var td = cell(tr, "");
        if (q.error) {
          td.textContent = q.error; td.className = "bad";
        } else {
          var a = document.createElement("a");
          a.href = root + "/dead?queue=" + encodeURIComponent(q.name);
          a.textContent = "dead letters";
          td.appendChild(a);
        }
      });
  }

  function workers(list) {
    fill("workers", list, "No worker alive on this notifier.", 7, function (tr, w) {
      cell(tr, w.name);
      cell(tr, (w.queues || []).join(", ") +
        (w.queues_more ? " and " + w.queues_more + " more" : ""));
      cell(tr, dash(w.in_flight) + " / " + dash(w.concurrency), "num");
      cell(tr, dash(w.processed), "num");
      cell(tr, dash(w.failed), "num");
      cell(tr, w.events ? "on" : "off");
      cell(tr, when(w.last_seen));
    });
  }

  draw();
  window.addEventListener("resize", draw);
  if (!window.EventSource) { state.textContent = "live updates need EventSource"; return; }
  var source = new EventSource(canvas.getAttribute("data-stream"));
  source.addEventListener("live", function (e) {
    var data = JSON.parse(e.data);
    series = data.series;
    draw();
    queues(data.queues, data.paused || [], data.can_pause);
    workers(data.workers);
    var note = document.getElementById("events-note");
    if (note && data.events_seen) { note.hidden = true; }
    state.textContent = "live, updated " + when(data.series.end + 1);
    canvas.setAttribute("data-events-seen", String(data.events_seen));
    canvas.setAttribute("data-total-succeeded",
      String(data.series.succeeded.reduce(function (a, b) { return a + b; }, 0)));
  });
  source.onerror = function () { state.textContent = "disconnected, reconnecting…"; };
}());
