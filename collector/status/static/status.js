// probenet status page: keeps /status live. Polls /status/data.json every second with
// If-None-Match (a 304 costs nothing), swaps in the fragments the server rendered (this
// script never builds markup of its own), and recolours the map for the selected service
// or probe. No eval, no inline code: the page's Content-Security-Policy allows neither.
(function () {
  "use strict";

  var POLL_MS = 1000;
  var FRAGMENTS = ["headline", "outages", "maintenance", "services", "uptime", "fleet"];
  var WORDS = {
    up: "Up", down: "Down", unknown: "Unknown", maintenance: "Maintenance",
    isolated: "Isolated"
  };
  var ICONS = {
    up: "up", down: "down", unknown: "unknown", maintenance: "maintenance",
    isolated: "isolated"
  };
  var etag = null;
  var model = null;
  var applied = {};
  var select = document.getElementById("map-select");
  var form = document.getElementById("map-form");
  var live = document.getElementById("live");
  if (!live) {
    return; // not the main page
  }

  function swap(id, html) {
    var element = document.getElementById(id);
    if (element && applied[id] !== html) {
      element.innerHTML = html;
      applied[id] = html;
    }
  }

  function selection() {
    return select ? select.value : "all";
  }

  function sameList(a, b) {
    return a.length === b.length && a.every(function (item, i) { return item === b[i]; });
  }

  function syncOptions() {
    if (!select) {
      return;
    }
    var wanted = Object.keys(model.map).sort();
    var present = Array.prototype.map.call(select.options, function (o) { return o.value; })
      .sort();
    if (!sameList(wanted, present)) {
      var chosen = select.value;
      select.innerHTML = model.html.map_options;
      select.value = model.map[chosen] ? chosen : "all";
    }
  }

  function applyMap() {
    if (!model) {
      return;
    }
    var map = document.getElementById("map");
    var located = model.regions.filter(function (r) { return r.location; })
      .map(function (r) { return r.id; }).sort();
    var drawn = Array.prototype.map.call(map.querySelectorAll(".rg"), function (g) {
      return g.getAttribute("data-region");
    }).sort();
    if (!sameList(located, drawn)) {
      map.innerHTML = model.html.map;
    }
    var states = model.map[selection()] || model.map.all || {};
    map.querySelectorAll(".rg").forEach(function (group) {
      var state = states[group.getAttribute("data-region")] || "unknown";
      group.setAttribute("class", "rg st-" + state);
      var label = group.querySelector(".rg-state");
      if (label && label.textContent !== (WORDS[state] || state)) {
        label.textContent = WORDS[state] || state;
      }
    });
    applyList(states);
  }

  // The same states as text under the map: a badge (icon + word) per region.
  function applyList(states) {
    var list = document.getElementById("region-list");
    var listed = Array.prototype.map.call(list.querySelectorAll("li"), function (li) {
      return li.getAttribute("data-region");
    }).sort();
    var regions = model.regions.map(function (r) { return r.id; }).sort();
    if (!sameList(regions, listed)) {
      list.innerHTML = model.html.region_list;
    }
    list.querySelectorAll("li").forEach(function (item) {
      var state = states[item.getAttribute("data-region")] || "unknown";
      var badge = item.querySelector(".badge");
      var use = badge.querySelector("use");
      var words = WORDS[state] || state;
      badge.setAttribute("class", "badge st-" + state);
      use.setAttribute("href", "#i-" + (ICONS[state] || "unknown"));
      if (badge.lastChild.textContent !== words) {
        badge.lastChild.textContent = words;
      }
    });
  }

  function render() {
    FRAGMENTS.forEach(function (id) {
      if (typeof model.html[id] === "string") {
        swap(id, model.html[id]);
      }
    });
    syncOptions();
    applyMap();
  }

  function clock() {
    return new Date().toISOString().slice(11, 19) + " UTC";
  }

  function status(state, text) {
    live.setAttribute("data-state", state);
    live.textContent = text;
  }

  function poll() {
    var headers = {};
    if (etag) {
      headers["If-None-Match"] = etag;
    }
    fetch("/status/data.json", { headers: headers, cache: "no-store" })
      .then(function (response) {
        if (response.status === 304) {
          return null;
        }
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        etag = response.headers.get("ETag");
        return response.json();
      })
      .then(function (data) {
        if (data) {
          model = data;
          render();
        }
        status("live", "Live: checked " + clock() + ". Times in UTC.");
      })
      .catch(function () {
        status("offline", "Cannot reach the collector since " + clock() +
          ": showing the last state it gave.");
      })
      .then(function () {
        window.setTimeout(poll, POLL_MS);
      });
  }

  if (select && form) {
    select.addEventListener("change", function () {
      applyMap();
      var url = new URL(window.location.href);
      url.searchParams.set("map", selection());
      window.history.replaceState(null, "", url.pathname + url.search);
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      applyMap();
    });
  }
  poll();
}());
