/*! tally.js: Tally's first-party browser tracker. No dependencies.
 * <script src="https://tally.example/js/tally.js" data-api-key="WRITE_KEY" defer></script>
 * Options (attributes): data-api-key (required), data-host (default: this script's origin).
 * API: tally.track(name, props), tally.identify(userId, traits), tally.group(groupId, traits),
 *      tally.page(), tally.reset(), tally.flush().
 * Honours Do Not Track / Global Privacy Control: then nothing is sent or stored. */
(function () {
  'use strict';
  var w = window, noop = function () {};
  var api = { track: noop, identify: noop, group: noop, page: noop, reset: noop, flush: noop, version: '1', __tally: true };
  var pending = Array.isArray(w.tally) ? w.tally : [];   // calls made before load: [method, ...args]
  if (w.tally && w.tally.__tally) return;                 // loaded twice
  w.tally = api;
  try {
    var d = document, n = navigator, loc = w.location;
    if (n.doNotTrack === '1' || n.doNotTrack === 'yes' || w.doNotTrack === '1' || n.msDoNotTrack === '1' || n.globalPrivacyControl === true) return;
    var script = d.currentScript || d.querySelector('script[data-api-key]');
    var KEY = script && script.getAttribute('data-api-key');
    if (!KEY) return;
    var HOST = (script.getAttribute('data-host') || new URL(script.src, loc.href).origin).replace(/\/+$/, '');
    var SESSION_MS = 30 * 60 * 1000, BATCH = 20, DELAY = 1000, MAX_QUEUED = 1000;
    var P = 'tally_';
    var guard = function (f) {
      return function () { try { return f.apply(null, arguments); } catch (e) { /* never break the host page */ } };
    };

    var mem = {};
    var store = function (area) {
      var s = null;
      try { s = w[area]; s.setItem(P + 't', '1'); s.removeItem(P + 't'); } catch (e) { s = null; }
      return {
        get: function (k) { try { return s ? s.getItem(P + k) : (mem[k] || null); } catch (e) { return mem[k] || null; } },
        set: function (k, v) { mem[k] = v; try { if (s) s.setItem(P + k, v); } catch (e) {} },
        del: function (k) { delete mem[k]; try { if (s) s.removeItem(P + k); } catch (e) {} }
      };
    };
    var ls = store('localStorage');

    var uuid = function () {
      var c = w.crypto;
      if (c && c.randomUUID) return c.randomUUID();
      var b = new Uint8Array(16);
      if (c && c.getRandomValues) c.getRandomValues(b); else for (var i = 0; i < 16; i++) b[i] = Math.random() * 256 | 0;
      b[6] = b[6] & 15 | 64; b[8] = b[8] & 63 | 128;
      var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join('');
      return h.slice(0, 8) + '-' + h.slice(8, 12) + '-' + h.slice(12, 16) + '-' + h.slice(16, 20) + '-' + h.slice(20);
    };

    var deviceId = function () {
      var id = ls.get('device_id');
      if (!id) { id = uuid(); ls.set('device_id', id); }
      return id;
    };
    // The session lives in localStorage so that tabs share it; it ends after 30 minutes
    // without an event, and every event extends it.
    var sessionId = function () {
      var now = Date.now(), s = null;
      try { s = JSON.parse(ls.get('session') || 'null'); } catch (e) {}
      if (!s || !s.id || !(now - s.last < SESSION_MS)) s = { id: uuid() };
      s.last = now;
      ls.set('session', JSON.stringify(s));
      return s.id;
    };

    var context = function () {
      var c = { device_id: deviceId(), session_id: sessionId(), source: 'product', library: { name: 'tally.js', version: api.version } };
      var g = ls.get('group_id');
      if (g) c.group_id = g;
      return c;
    };
    var base = function () {
      return { message_id: uuid(), user_id: ls.get('user_id') || '', context: context(), timestamp: new Date().toISOString() };
    };
    var obj = function (o) { return o && typeof o === 'object' && !Array.isArray(o) ? o : {}; };

    var queues = { track: [], identify: [], group: [] }, timer = null;

    // sendBeacon cannot set headers, so there the key travels in the query string (the
    // server accepts ?api_key= on the /api routes). Used only where fetch keepalive is missing.
    var KEEPALIVE = typeof Request !== 'undefined' && 'keepalive' in Request.prototype;
    var beacon = function (url, body) {
      try { if (n.sendBeacon) n.sendBeacon(url + '?api_key=' + encodeURIComponent(KEY), new Blob([body], { type: 'text/plain' })); } catch (e) {}
    };
    var tries = new WeakMap();
    var retry = function (path, items) {
      items = items.filter(function (it) { var t = (tries.get(it) || 0) + 1; tries.set(it, t); return t < 3; });
      if (!items.length) return;
      queues[path] = items.concat(queues[path]).slice(0, MAX_QUEUED);
      schedule(DELAY * 2);
    };
    var send = function (path, items, unloading) {
      var url = HOST + '/api/' + path, body = JSON.stringify(items);
      if (!w.fetch || (unloading && !KEEPALIVE)) return beacon(url, body);
      w.fetch(url, {
        method: 'POST', keepalive: !!unloading, credentials: 'omit', body: body,
        headers: { 'content-type': 'application/json', 'x-api-key': KEY }
      }).then(function (r) {
        if (r.status === 429 || r.status >= 500) retry(path, items);
      }, function () { if (unloading) beacon(url, body); else retry(path, items); });
    };

    var flush = function (unloading) {
      if (timer) { clearTimeout(timer); timer = null; }
      Object.keys(queues).forEach(function (path) {
        var q = queues[path];
        queues[path] = [];
        // Keepalive bodies are capped at 64 KB in total, so cut them small when unloading.
        var chunk = [], size = 0, limit = unloading ? 50000 : 1e6;
        q.forEach(function (it) {
          var len = JSON.stringify(it).length;
          if (chunk.length && (chunk.length >= BATCH || size + len > limit)) { send(path, chunk, unloading); chunk = []; size = 0; }
          chunk.push(it); size += len;
        });
        if (chunk.length) send(path, chunk, unloading);
      });
    };
    var schedule = function (ms) { if (!timer) timer = setTimeout(guard(function () { timer = null; flush(false); }), ms); };
    var enqueue = function (path, item) {
      JSON.stringify(item); // throws here (caught by the caller) for circular properties, not later in a batch
      var q = queues[path];
      if (q.length >= MAX_QUEUED) q.shift();
      q.push(item);
      if (q.length >= BATCH) flush(false); else schedule(DELAY);
    };

    var track = function (name, props) {
      if (!name || typeof name !== 'string') return;
      var it = base();
      it.event_name = name;
      it.properties = obj(props);
      enqueue('track', it);
    };

    var lastUrl = null, lastRef = d.referrer || '';
    var page = function () {
      var url = loc.href;
      if (url === lastUrl) return;
      var p = {
        page_title: d.title, page_url: url, page_path: loc.pathname,
        page_referrer: lastUrl === null ? lastRef : lastUrl,
        language: n.language || '', timezone: ''
      };
      try { p.timezone = Intl.DateTimeFormat().resolvedOptions().timeZone || ''; } catch (e) {}
      try {
        var qs = new URLSearchParams(loc.search);
        ['utm_source', 'utm_medium', 'utm_campaign', 'utm_term', 'utm_content'].forEach(function (k) {
          var v = qs.get(k);
          if (v) p[k] = v;
        });
      } catch (e) {}
      lastUrl = url;
      track('page_visit', p);
    };
    // Let the app set its title after a route change before reading it.
    var pageSoon = function () { setTimeout(guard(page), 0); };


    api.track = guard(track);
    api.page = guard(function () { lastUrl = null; page(); });
    api.identify = guard(function (userId, traits) {
      if (userId === undefined || userId === null || userId === '') return;
      userId = String(userId);
      ls.set('user_id', userId);
      var it = base();
      it.traits = obj(traits);
      enqueue('identify', it);
    });
    api.group = guard(function (groupId, traits) {
      if (groupId === undefined || groupId === null || groupId === '') return;
      groupId = String(groupId);
      ls.set('group_id', groupId);
      var it = base();
      it.group_id = groupId;
      it.traits = obj(traits);
      enqueue('group', it);
    });
    api.reset = guard(function () {
      flush(false);
      ls.del('user_id'); ls.del('group_id'); ls.del('session'); ls.del('device_id');
    });
    api.flush = guard(function () { flush(false); });

    ['pushState', 'replaceState'].forEach(function (m) {
      var orig = history[m];
      if (typeof orig !== 'function') return;
      history[m] = function () {
        var r = orig.apply(this, arguments);
        pageSoon();
        return r;
      };
    });
    w.addEventListener('popstate', pageSoon);
    w.addEventListener('hashchange', pageSoon);
    var unload = guard(function () { flush(true); });
    d.addEventListener('visibilitychange', function () { if (d.visibilityState === 'hidden') unload(); });
    w.addEventListener('pagehide', unload);

    page();
    pending.forEach(guard(function (call) {
      if (call && typeof api[call[0]] === 'function') api[call[0]].apply(null, [].slice.call(call, 1));
    }));
  } catch (e) { /* never break the host page */ }
})();
