/*
 * log.js: browser side of the Chengis log viewer (job log page).
 *
 * Owns everything inside <section id="log-viewer"> once JavaScript runs: it
 * replaces the server-rendered .log-static fallback with a toolbar (search,
 * follow, expand/collapse all, status, reconnect indicator) and a virtually
 * rendered scroll area (only the visible rows are in the DOM), loads the log
 * through the JSON page API, tails a live log over Server-Sent Events with its
 * own reconnect/dedupe logic, renders ANSI SGR colours, and handles #L123
 * permalinks. Styles are in log.css (ROW_H must match --log-row-h there).
 *
 * Vanilla ES2020, no dependencies, no inline script/handlers (CSP), no
 * innerHTML: log text is untrusted and only ever reaches the DOM as text nodes.
 * Exposes window.chengisLog for tests and benches (see the end of the file).
 */
(() => {
  'use strict';

  const ROOT = document.getElementById('log-viewer');
  if (!ROOT) return;

  // ---- constants --------------------------------------------------------
  const ROW_H = rowHeight();     // px, every row (line or step header) has it
  const OVERSCAN = 30;           // rows rendered above and below the viewport
  const FIRST_PAGE = 2000;       // lines in the first request (first screen)
  const BG_PAGE = 50000;         // lines per background request
  const MAX_LIMIT = 100000;      // the page API's maximum limit
  const SEARCH_DEBOUNCE_MS = 150;
  const SEARCH_SLICE_MS = 8;     // work per search slice before yielding
  const STATUSES = ['queued', 'running', 'success', 'failure', 'cancelled',
    'timed_out', 'skipped', 'error'];
  const TERMINAL = new Set(['success', 'failure', 'cancelled', 'timed_out', 'skipped', 'error']);

  // ---- configuration from the page -------------------------------------
  const cfg = {
    linesUrl: ROOT.dataset.linesUrl,
    streamUrl: ROOT.dataset.streamUrl,
    eventsUrl: ROOT.dataset.eventsUrl,
    job: ROOT.dataset.job || '',
    finished: ROOT.dataset.finished === 'true',
  };

  // ---- state ------------------------------------------------------------
  const lines = [];          // loaded lines in order; lines[i].number === i + 1
  const lowerCache = [];     // ANSI-stripped, lower-cased text per line (search)
  const pending = new Map(); // number -> line received ahead of a gap
  let steps = readSteps();   // [{idx, name, status, first_line, started_ms, finished_ms}]
  const collapsed = new Set(); // collapsed step idx values
  const S = {
    finished: false, loaded: false, connected: false, reconnects: 0,
    firstScreenMs: null, serverFinished: false,
  };
  let selection = null;      // {from, to} selected line numbers (permalink)
  let selAnchor = 0;         // first click of a shift-click range
  let pendingJump = 0;       // line to scroll to once it is loaded
  let layout = null;         // computed by computeLayout(), null when stale
  let rowCache = new Map();  // row key -> element currently rendered
  let renderQueued = false;
  let revealMatch = false;   // scroll horizontally to the current match after render
  let maxWidth = 0;          // widest rows box seen (stable horizontal scroll range)
  let digits = 0;

  // ---- DOM construction --------------------------------------------------
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === false || v == null) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const k of kids) e.append(k);
    return e;
  }

  const searchInput = h('input', {
    id: 'log-search', type: 'search', class: 'log-search-input', placeholder: 'Search log',
    autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'log-search-count',
  });
  const searchCount = h('span', { id: 'log-search-count', class: 'log-search-count', 'aria-live': 'polite' });
  const prevBtn = h('button', { id: 'log-search-prev', type: 'button', class: 'log-btn',
    'aria-label': 'Previous match', title: 'Previous match (Shift+Enter)', text: '↑' });
  const nextBtn = h('button', { id: 'log-search-next', type: 'button', class: 'log-btn',
    'aria-label': 'Next match', title: 'Next match (Enter)', text: '↓' });
  const followBox = h('input', { id: 'log-follow', type: 'checkbox', checked: true });
  const followLabel = h('label', { class: 'log-follow', for: 'log-follow',
    title: 'Keep the newest lines in view while the job runs' }, followBox, ' Follow');
  const expandBtn = h('button', { id: 'log-expand-all', type: 'button', class: 'log-btn', text: 'Expand all' });
  const collapseBtn = h('button', { id: 'log-collapse-all', type: 'button', class: 'log-btn', text: 'Collapse all' });
  const statusEl = h('span', { id: 'log-status', class: 'log-status' });
  const connEl = h('span', { id: 'log-conn', class: 'log-conn', role: 'status', hidden: true, text: 'reconnecting…' });
  const toolbar = h('div', { class: 'log-toolbar', role: 'group', 'aria-label': 'Log tools' },
    h('div', { class: 'log-search', role: 'search' },
      h('label', { for: 'log-search', class: 'log-sr-only', text: 'Search log' }),
      searchInput, searchCount, prevBtn, nextBtn),
    followLabel, expandBtn, collapseBtn, statusEl, connEl);
  const rowsBox = h('div', { class: 'log-rows' });
  const spacer = h('div', { class: 'log-spacer' }, rowsBox);
  const emptyEl = h('p', { class: 'log-empty', hidden: true });
  const scroller = h('div', { id: 'log-scroll', class: 'log-scroll', tabindex: '0', role: 'region',
    'aria-label': 'Log output' + (cfg.job ? ' of ' + cfg.job : ''), hidden: true }, spacer, emptyEl);
  ROOT.classList.add('log-js');
  ROOT.prepend(toolbar, scroller);
  if (cfg.finished) followLabel.hidden = true;

  function rowHeight() {
    const v = getComputedStyle(ROOT).getPropertyValue('--log-row-h').trim();
    const px = /^(\d+(?:\.\d+)?)px$/.exec(v);
    return px ? parseFloat(px[1]) : 20;
  }

  function readSteps() {
    let raw = [];
    try {
      const el = document.getElementById('log-steps');
      raw = el ? JSON.parse(el.textContent || '[]') : [];
    } catch (_) { raw = []; }
    if (!Array.isArray(raw)) raw = [];
    return raw.filter((s) => s && Number.isInteger(s.idx)).map(normStep).sort((a, b) => a.idx - b.idx);
  }

  function normStep(s) {
    return {
      idx: s.idx,
      name: String(s.name ?? 'step ' + s.idx),
      status: STATUSES.includes(s.status) ? s.status : 'queued',
      first_line: Number.isInteger(s.first_line) && s.first_line >= 1 ? s.first_line : null,
      started_ms: typeof s.started_ms === 'number' ? s.started_ms : null,
      finished_ms: typeof s.finished_ms === 'number' ? s.finished_ms : null,
    };
  }

  // ---- text cleaning and ANSI SGR parsing ----------------------------------
  // Escape sequences: CSI (group 1 = parameters, 2 = intermediates, 3 = final
  // byte), OSC (ended by BEL or ST, or the end of the line), DCS/SOS/PM/APC
  // strings, ESC + intermediates + final (charset selection), two-byte escapes,
  // and a lone ESC at the end of the line.
  const ESC_RE = /\x1b(?:\[([0-?]*)([ -/]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[PX^_][^\x1b]*(?:\x1b\\)?|[ -/]+[0-~]|[0-~])?/g;
  const CTRL_RE = /[\x00-\x08\x0a-\x1a\x1c-\x1f\x7f]/;

  // Other control characters would break the fixed row height (a CR or LF
  // inside white-space: pre is a line break): a line with carriage returns
  // (progress bars) shows the text after the last one, like a terminal
  // mostly would; LF becomes a space; other C0 controls except TAB and ESC
  // are dropped.
  function cleanText(raw) {
    let s = typeof raw === 'string' ? raw : String(raw ?? '');
    if (!CTRL_RE.test(s)) return s;
    if (s.includes('\r')) {
      s = s.replace(/\r+$/, '');
      const k = s.lastIndexOf('\r');
      if (k >= 0) s = s.slice(k + 1);
    }
    return s.replace(/\n/g, ' ').replace(/[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f]/g, '');
  }

  /** The text as displayed (cleaned, escape sequences removed). */
  function plainOf(raw) {
    const s = cleanText(raw);
    return s.includes('\x1b') ? s.replace(ESC_RE, '') : s;
  }

  /** Lower-cased plain text of lines[i], cached when filled in order. */
  function lowerOf(i) {
    let s = lowerCache[i];
    if (s !== undefined) return s;
    s = plainOf(lines[i].text).toLowerCase();
    if (i === lowerCache.length) lowerCache.push(s); // keep the cache dense
    return s;
  }

  const CUBE = [0, 95, 135, 175, 215, 255];
  /** xterm 256-colour index >= 16 -> CSS colour (6x6x6 cube, then grey ramp). */
  function xterm256(n) {
    if (n >= 232) { const g = 8 + 10 * (n - 232); return `rgb(${g},${g},${g})`; }
    const c = n - 16;
    return `rgb(${CUBE[Math.floor(c / 36)]},${CUBE[Math.floor(c / 6) % 6]},${CUBE[c % 6]})`;
  }
  const clamp255 = (v) => Math.max(0, Math.min(255, v | 0));

  /** Parse `38;5;n` / `38;2;r;g;b` arguments; returns [colour, params consumed]. */
  function extColour(args) {
    if (args[0] === 5 && args.length >= 2 && args[1] >= 0 && args[1] <= 255) {
      const n = args[1];
      return [n < 16 ? { idx: n } : { css: xterm256(n) }, 2];
    }
    if (args[0] === 2 && args.length >= 4) {
      return [{ css: `rgb(${clamp255(args[1])},${clamp255(args[2])},${clamp255(args[3])})` }, 4];
    }
    return [undefined, args[0] === 5 ? 2 : args[0] === 2 ? 4 : 1];
  }

  /** Apply one SGR parameter string (the part between ESC[ and m) to st. */
  function applySgr(st, params) {
    const p = params === '' ? [''] : params.split(';');
    for (let i = 0; i < p.length; i++) {
      if (p[i].includes(':')) { // ISO 8613-6 colon form: 38:2::r:g:b, 38:5:n, 4:3
        const sub = p[i].split(':').map((x) => (x === '' ? -1 : parseInt(x, 10)));
        if (sub[0] === 38 || sub[0] === 48) {
          let args = sub.slice(1);
          if (args[0] === 2 && args.length >= 5) args = [2, args[2], args[3], args[4]]; // skip colour space id
          const [c] = extColour(args);
          if (c) st[sub[0] === 38 ? 'fg' : 'bg'] = c;
        } else if (sub[0] === 4) st.underline = sub[1] !== 0;
        continue;
      }
      const c = p[i] === '' ? 0 : parseInt(p[i], 10);
      if (c === 0) { st.fg = st.bg = null; st.bold = st.dim = st.italic = st.underline = st.inverse = st.strike = false; }
      else if (c === 1) st.bold = true;
      else if (c === 2) st.dim = true;
      else if (c === 3) st.italic = true;
      else if (c === 4) st.underline = true;
      else if (c === 7) st.inverse = true;
      else if (c === 9) st.strike = true;
      else if (c === 22) st.bold = st.dim = false;
      else if (c === 23) st.italic = false;
      else if (c === 24) st.underline = false;
      else if (c === 27) st.inverse = false;
      else if (c === 29) st.strike = false;
      else if (c >= 30 && c <= 37) st.fg = { idx: c - 30 };
      else if (c >= 90 && c <= 97) st.fg = { idx: c - 90 + 8 };
      else if (c >= 40 && c <= 47) st.bg = { idx: c - 40 };
      else if (c >= 100 && c <= 107) st.bg = { idx: c - 100 + 8 };
      else if (c === 39) st.fg = null;
      else if (c === 49) st.bg = null;
      else if (c === 38 || c === 48) {
        const args = p.slice(i + 1, i + 5).map((x) => parseInt(x, 10));
        const [col, used] = extColour(args);
        if (col) st[c === 38 ? 'fg' : 'bg'] = col;
        i += used;
      }
      // anything else (blink, fonts, overline, ...) is ignored
    }
  }

  /** Classes and inline colours of a style state. */
  function styleOf(st) {
    let fg = st.fg, bg = st.bg;
    const cls = [];
    if (st.inverse) {
      [fg, bg] = [bg, fg];
      if (!fg) cls.push('ansi-fg-inverse');
      if (!bg) cls.push('ansi-bg-inverse');
    }
    if (fg && fg.idx !== undefined) cls.push('ansi-fg-' + fg.idx);
    if (bg && bg.idx !== undefined) cls.push('ansi-bg-' + bg.idx);
    if (st.bold) cls.push('ansi-bold');
    if (st.dim) cls.push('ansi-dim');
    if (st.italic) cls.push('ansi-italic');
    if (st.underline) cls.push('ansi-underline');
    if (st.strike) cls.push('ansi-strike');
    return { cls: cls.join(' '), fg: fg && fg.css, bg: bg && bg.css };
  }

  /**
   * Split a cleaned line into styled segments [{t, cls, fg, bg}]. The SGR
   * state starts from the default at every line: colours do not carry across
   * lines (simple, and a line renders the same wherever it is scrolled to).
   */
  function parseAnsi(text) {
    const segs = [];
    const st = { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false, inverse: false, strike: false };
    let style = styleOf(st);
    let pos = 0;
    ESC_RE.lastIndex = 0;
    for (let m; (m = ESC_RE.exec(text));) {
      if (m.index > pos) segs.push({ t: text.slice(pos, m.index), ...style });
      pos = ESC_RE.lastIndex;
      // SGR: final byte m, no intermediates, no private marker (<=>?)
      if (m[3] === 'm' && !m[2] && !/[<=>?]/.test(m[1])) { applySgr(st, m[1]); style = styleOf(st); }
      if (m[0].length === 0) ESC_RE.lastIndex++; // cannot happen (ESC is consumed), but never loop forever
    }
    if (pos < text.length) segs.push({ t: text.slice(pos), ...style });
    return segs;
  }

  // ---- layout: steps and lines -> rows -----------------------------------
  // Rows, in order: the lines before the first step's first_line (no header),
  // then per step its header and, unless collapsed, its lines
  // [first_line, next step's first_line - 1]. A step without first_line has
  // no lines and sits after the previous step's lines.
  function computeLayout() {
    const last = lines.length;
    const eff = [];
    let prev = 1;
    for (const st of steps) {
      if (st.first_line != null) { prev = Math.max(prev, st.first_line); eff.push(prev); } else eff.push(null);
    }
    const ends = new Array(steps.length);
    let nextStart = Infinity;
    for (let i = steps.length - 1; i >= 0; i--) {
      ends[i] = nextStart - 1;
      if (eff[i] != null) nextStart = eff[i];
    }
    const segs = [];
    let row = 0;
    const preEnd = Math.min(last, nextStart - 1);
    if (preEnd >= 1) { segs.push({ si: -1, from: 1, to: preEnd, nl: preEnd, row, count: preEnd, coll: false }); row += preEnd; }
    for (let i = 0; i < steps.length; i++) {
      const from = eff[i] ?? 1;
      const to = eff[i] == null ? 0 : Math.min(last, ends[i]);
      const nl = Math.max(0, to - from + 1);
      const coll = collapsed.has(steps[i].idx);
      const count = 1 + (coll ? 0 : nl);
      segs.push({ si: i, from, to, nl, row, count, coll });
      row += count;
    }
    layout = { segs, total: row };
    return layout;
  }
  const getLayout = () => layout || computeLayout();
  const layoutChanged = () => { layout = null; };

  /** Row r -> {key, step} for a header or {key, n} for a line. */
  function rowAt(r) {
    const segs = getLayout().segs;
    let lo = 0, hi = segs.length - 1;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (segs[mid].row <= r) lo = mid; else hi = mid - 1; }
    const sg = segs[lo];
    const off = r - sg.row;
    if (sg.si >= 0 && off === 0) return { key: 'h' + steps[sg.si].idx, step: sg.si };
    const n = sg.from + off - (sg.si >= 0 ? 1 : 0);
    return { key: String(n), n };
  }

  /** The segment holding line n (undefined if none). */
  function segOfLine(n) {
    return getLayout().segs.find((sg) => sg.nl > 0 && n >= sg.from && n <= sg.to);
  }

  /** Row index of line n, expanding its step if collapsed. */
  function rowOfLine(n) {
    let sg = segOfLine(n);
    if (!sg) return -1;
    if (sg.coll) { collapsed.delete(steps[sg.si].idx); layoutChanged(); invalidate(); sg = segOfLine(n); }
    return sg.row + (sg.si >= 0 ? 1 : 0) + (n - sg.from);
  }

  function applyHeight() {
    spacer.style.height = getLayout().total * ROW_H + 'px';
  }

  /** Bring line n into view (a third from the top) unless it is visible already. */
  function scrollToLine(n, force) {
    const r = rowOfLine(n);
    if (r < 0) return false;
    applyHeight();
    const top = r * ROW_H;
    const vh = scroller.clientHeight;
    if (force || top < scroller.scrollTop || top + ROW_H > scroller.scrollTop + vh) {
      scroller.scrollTop = Math.max(0, top - Math.floor(vh / 3));
    }
    scheduleRender();
    return true;
  }

  /** Number of the first line at or below the top of the viewport. */
  function topVisibleLine() {
    const L = getLayout();
    for (let r = Math.floor(scroller.scrollTop / ROW_H); r < L.total; r++) {
      const it = rowAt(r);
      if (it.n) return it.n;
    }
    return 1;
  }

  // ---- rendering ---------------------------------------------------------
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => { renderQueued = false; render(); });
  }

  /** Drop rendered rows so the next render rebuilds them (search, selection changed). */
  function invalidate() { rowCache = new Map(); }
  function invalidateHeaders() {
    for (const k of rowCache.keys()) if (k[0] === 'h') rowCache.delete(k);
  }

  const isLive = () => !S.finished && !cfg.finished;

  function render() {
    if (scroller.hidden) return;
    const wasAtBottom = scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - ROW_H;
    applyHeight();
    updateDigits();
    if (pendingJump && pendingJump <= lines.length) {
      scrollToLine(pendingJump, true);
      pendingJump = 0;
    } else if (pendingJump && (S.finished || (S.loaded && cfg.finished))) {
      pendingJump = 0; // that line does not exist
    } else if (isLive() && S.loaded && followBox.checked && wasAtBottom) {
      scroller.scrollTop = scroller.scrollHeight; // stay at the bottom (live tail)
    }

    const L = getLayout(); // after a jump, which may have expanded a step
    const top = scroller.scrollTop;
    const vh = scroller.clientHeight || window.innerHeight;
    const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const end = Math.min(L.total, Math.ceil((top + vh) / ROW_H) + OVERSCAN);
    rowsBox.style.transform = `translateY(${first * ROW_H}px)`;

    const active = document.activeElement;
    const activeKey = active && rowsBox.contains(active) ? active.closest('[data-key]')?.dataset.key : null;
    const next = new Map();
    const els = [];
    const built = [];
    for (let r = first; r < end; r++) {
      const it = rowAt(r);
      let el = rowCache.get(it.key);
      if (!el) {
        el = it.n ? buildLine(it.n) : buildHeader(it.step);
        if (it.n) built.push(el);
      }
      next.set(it.key, el);
      els.push(el);
    }
    // Sync the children with as few DOM moves as possible (keeps focus).
    const want = new Set(els);
    for (let c = rowsBox.firstChild; c;) { const nx = c.nextSibling; if (!want.has(c)) c.remove(); c = nx; }
    let cur = rowsBox.firstChild;
    for (const el of els) { if (cur === el) cur = cur.nextSibling; else rowsBox.insertBefore(el, cur); }
    rowCache = next;
    if (activeKey && document.activeElement !== active) {
      (next.get(activeKey) || scroller).focus({ preventScroll: true });
    }

    // A stable horizontal scroll range: the widest line seen so far (the
    // spacer's min-width keeps it at least as wide as the viewport).
    let w = maxWidth;
    for (const el of built) { const t = el.lastChild; w = Math.max(w, t.offsetLeft + t.offsetWidth + ROW_H); }
    if (w > maxWidth) { maxWidth = w; spacer.style.width = w + 'px'; }
    if (revealMatch) { revealMatch = false; revealCurrentMark(); }
    emptyEl.hidden = lines.length > 0 || !S.loaded;
    emptyEl.textContent = isLive() ? 'No output yet.' : 'No output.';
    updateStatus();
  }

  function updateDigits() {
    const d = Math.max(3, String(lines.length).length);
    if (d !== digits) { digits = d; ROOT.style.setProperty('--log-digits', String(d)); }
  }

  function buildHeader(si) {
    const st = steps[si];
    const coll = collapsed.has(st.idx);
    const label = st.status.replace('_', ' ');
    const row = h('div', {
      class: `log-step log-step-${st.status}`, role: 'button', tabindex: '0',
      'aria-expanded': coll ? 'false' : 'true', 'data-key': 'h' + st.idx, 'data-step': String(st.idx),
      title: (coll ? 'Expand ' : 'Collapse ') + st.name,
    }, h('span', { class: 'log-step-inner' },
      h('span', { class: 'log-step-caret', 'aria-hidden': 'true', text: coll ? '▸' : '▾' }),
      h('span', { class: 'log-step-name', text: st.name }),
      h('span', { class: `log-step-status log-status-${st.status}`, text: label }),
      h('span', { class: 'log-step-duration', text: stepDuration(st) })));
    return row;
  }

  function stepDuration(st) {
    if (st.started_ms == null) return '';
    const end = st.finished_ms ?? (st.status === 'running' ? Date.now() : null);
    return end == null ? '' : fmtDuration(end - st.started_ms);
  }

  function fmtDuration(ms) {
    ms = Math.max(0, ms);
    if (ms < 1000) return Math.round(ms) + 'ms';
    const s = ms / 1000;
    if (s < 60) return (s < 10 ? s.toFixed(1) : Math.floor(s)) + 's';
    const m = Math.floor(s / 60), ss = String(Math.floor(s % 60)).padStart(2, '0');
    if (m < 60) return `${m}m ${ss}s`;
    return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
  }

  function buildLine(n) {
    const l = lines[n - 1];
    let cls = 'log-line';
    if (l.stream === 'stderr') cls += ' log-stderr';
    else if (l.stream === 'system') cls += ' log-system';
    if (selection && n >= selection.from && n <= selection.to) cls += ' log-selected';
    const row = h('div', { class: cls, 'data-key': String(n) });
    const a = h('a', { class: 'log-ln', href: '#L' + n, tabindex: '-1', text: String(n) });
    const t = h('span', { class: 'log-text' });
    fillText(t, l.text, n);
    row.append(a, t);
    return row;
  }

  /** Search matches of line n as [[start, end, isCurrent]], or null. */
  function marksOf(n, plain) {
    const q = search.q;
    if (!q) return null;
    const low = n - 1 < lowerCache.length ? lowerCache[n - 1] : plain.toLowerCase();
    const cur = search.cur >= 0 ? search.cur : -1;
    const out = [];
    for (let k = low.indexOf(q); k >= 0; k = low.indexOf(q, k + q.length)) {
      out.push([k, k + q.length, cur >= 0 && search.ml[cur] === n && search.mp[cur] === k]);
    }
    return out.length ? out : null;
  }

  /** Fill span t with the line's text: ANSI spans, search marks, text nodes only. */
  function fillText(t, raw, n) {
    const text = cleanText(raw);
    const segs = text.includes('\x1b') ? parseAnsi(text) : null;
    const plain = segs ? segs.map((s) => s.t).join('') : text;
    const marks = marksOf(n, plain);
    if (!segs && !marks) { t.textContent = plain; return; }
    let pos = 0, mi = 0;
    for (const sg of segs || [{ t: plain, cls: '' }]) {
      const styled = sg.cls || sg.fg || sg.bg;
      let host = t;
      if (styled) {
        host = document.createElement('span');
        if (sg.cls) host.className = sg.cls;
        if (sg.fg) host.style.color = sg.fg;            // CSSOM, allowed by CSP
        if (sg.bg) host.style.backgroundColor = sg.bg;
        t.append(host);
      }
      const segEnd = pos + sg.t.length;
      let p = pos;
      while (p < segEnd) {
        while (marks && mi < marks.length && marks[mi][1] <= p) mi++;
        const m = marks && mi < marks.length ? marks[mi] : null;
        if (m && m[0] <= p) { // inside a match
          const e = Math.min(m[1], segEnd);
          host.append(h('mark', { class: m[2] ? 'log-match log-match-current' : 'log-match', text: sg.t.slice(p - pos, e - pos) }));
          p = e;
        } else {
          const e = m ? Math.min(m[0], segEnd) : segEnd;
          host.append(sg.t.slice(p - pos, e - pos));
          p = e;
        }
      }
      pos = segEnd;
    }
  }

  /** Scroll horizontally so that the current search match is visible. */
  function revealCurrentMark() {
    const m = rowsBox.querySelector('.log-match-current');
    if (!m) return;
    const sr = scroller.getBoundingClientRect();
    const mr = m.getBoundingClientRect();
    const ln = m.closest('.log-line')?.querySelector('.log-ln');
    const gutter = ln ? ln.getBoundingClientRect().width : 0;
    if (mr.left < sr.left + gutter) scroller.scrollLeft -= sr.left + gutter - mr.left + 2 * ROW_H;
    else if (mr.right > sr.left + scroller.clientWidth) scroller.scrollLeft += mr.right - (sr.left + scroller.clientWidth) + 2 * ROW_H;
  }

  function updateStatus() {
    const n = lines.length.toLocaleString('en');
    let text;
    if (!S.loaded) text = `loading ${n} lines…`;
    else if (isLive()) text = `${n} lines · live`;
    else text = `${n} line${lines.length === 1 ? '' : 's'}`;
    if (statusEl.textContent !== text) statusEl.textContent = text;
  }

  // ---- ingesting lines ----------------------------------------------------
  /**
   * Take one line from the page API or the stream: numbers <= last are
   * duplicates and dropped, last + 1 is appended (and any buffered successors
   * with it), anything further is buffered until the gap is fetched.
   */
  function ingest(l, fallbackNumber) {
    if (!l || typeof l !== 'object') return;
    const num = Number.isInteger(l.number) ? l.number : fallbackNumber;
    if (!Number.isInteger(num) || num <= lines.length) return;
    if (num > lines.length + 1) { pending.set(num, l); return; }
    lines.push(normLine(l, num));
    for (let nx; (nx = pending.get(lines.length + 1));) {
      pending.delete(lines.length + 1);
      lines.push(normLine(nx, lines.length + 1));
    }
    // (no buffered number can be <= last now: every increment of last checked last + 1)
  }

  function normLine(l, num) {
    if (l.number === num && typeof l.text === 'string') return l;
    return { ...l, number: num, text: typeof l.text === 'string' ? l.text : String(l.text ?? '') };
  }

  /** After lines were added: relayout, render next frame, continue the search. */
  function linesAdded() {
    layoutChanged();
    scheduleRender();
    scheduleScan();
    if (pending.size) fillGap();
  }

  // ---- page API ------------------------------------------------------------
  function withParams(url, params) {
    const u = new URL(url, location.href);
    for (const [k, v] of Object.entries(params)) u.searchParams.set(k, String(v));
    return u.toString();
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  /** 0.5 s, 1 s, 2 s, 4 s, then 5 s, each with +-25% jitter (capped at 5 s). */
  const backoff = (attempt) => Math.min(5000, Math.min(5000, 500 * 2 ** attempt) * (0.75 + Math.random() * 0.5));

  /** One page from the API, retried with backoff until it succeeds. */
  async function fetchPage(offset, limit) {
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await fetch(withParams(cfg.linesUrl, { offset, limit: Math.min(MAX_LIMIT, limit) }),
          { headers: { Accept: 'application/json' }, credentials: 'same-origin' });
        if (!r.ok) throw new Error('HTTP ' + r.status);
        const page = await r.json();
        if (!page || !Array.isArray(page.lines)) throw new Error('bad page');
        if (page.finished === true) S.serverFinished = true;
        return page;
      } catch (_) {
        statusEl.textContent = 'loading failed, retrying…';
        await sleep(backoff(attempt));
      }
    }
  }

  /**
   * Load every line that exists now: the first page small and rendered at
   * once, the rest in big background pages, until a page comes back empty.
   */
  async function loadBacklog() {
    let limit = FIRST_PAGE;
    let firstDone = false;
    for (;;) {
      const page = await fetchPage(lines.length + 1, limit);
      const before = lines.length;
      for (const l of page.lines) ingest(l);
      if (!firstDone) {
        firstDone = true;
        showViewer();
        render();                              // the first screen, now
        S.firstScreenMs = performance.now();
      }
      linesAdded();
      if (page.lines.length === 0 || lines.length === before) break;
      // A growing log: a short page means we reached the present; the stream
      // delivers the rest (otherwise a chatty job could keep us paging forever).
      // A finished log is paged until an empty page (the server may cap limit).
      if (!cfg.finished && !S.serverFinished && page.lines.length < limit) break;
      limit = BG_PAGE;
      await sleep(0); // let the browser paint and handle input between pages
    }
  }

  function showViewer() {
    for (const el of ROOT.querySelectorAll('.log-static')) el.remove();
    scroller.hidden = false;
  }

  /** Fetch lines between last and the buffered ones (a gap in the stream). */
  let gapBusy = false;
  async function fillGap() {
    if (gapBusy) return;
    gapBusy = true;
    try {
      for (let attempt = 0; pending.size; ) {
        let target = Infinity;
        for (const k of pending.keys()) if (k < target) target = k;
        target -= 1;
        if (target <= lines.length) { ingest(pending.get(target + 1), target + 1); linesAdded(); continue; }
        const page = await fetchPage(lines.length + 1, target - lines.length);
        const before = lines.length;
        for (const l of page.lines) ingest(l);
        if (lines.length > before) { attempt = 0; linesAdded(); } else await sleep(backoff(attempt++));
      }
    } finally {
      gapBusy = false;
    }
  }

  /** Fetch whatever exists after last (used when the stream says `end`). */
  async function catchUp() {
    for (;;) {
      const page = await fetchPage(lines.length + 1, MAX_LIMIT);
      const before = lines.length;
      for (const l of page.lines) ingest(l);
      if (lines.length === before) return;
      linesAdded();
    }
  }

  // ---- live stream ---------------------------------------------------------
  let es = null, esAttempt = 0, esTimer = 0, esStableTimer = 0;

  function setConnected(on) {
    S.connected = on;
    connEl.hidden = on || !isLive();
  }

  function openStream() {
    if (!isLive() || !cfg.streamUrl) return;
    clearTimeout(esTimer);
    const src = new EventSource(withParams(cfg.streamUrl, { offset: lines.length + 1 }));
    es = src;
    src.onopen = () => {
      if (es !== src) return;
      setConnected(true);
      clearTimeout(esStableTimer);
      esStableTimer = setTimeout(() => { if (es === src) esAttempt = 0; }, 3000);
    };
    src.addEventListener('line', (ev) => {
      if (es !== src) return;
      let l;
      try { l = JSON.parse(ev.data); } catch (_) { return; }
      if (!S.connected) setConnected(true);
      esAttempt = 0;
      const before = lines.length;
      ingest(l, parseInt(ev.lastEventId, 10));
      if (lines.length !== before || pending.size) linesAdded();
    });
    src.addEventListener('end', () => {
      if (es !== src) return;
      closeStream();
      streamEnded();
    });
    // Our own reconnect: EventSource's retry would keep the stale offset and
    // may give up for good on an HTTP error.
    src.onerror = () => {
      if (es !== src) return;
      closeStream();
      setConnected(false);
      scheduleReconnect();
    };
  }

  function closeStream() {
    if (es) { es.close(); es = null; }
    clearTimeout(esStableTimer);
  }

  function scheduleReconnect() {
    clearTimeout(esTimer);
    const delay = backoff(esAttempt++);
    esTimer = setTimeout(reconnect, delay);
  }

  function reconnect() {
    if (!isLive() || es) return;
    S.reconnects++;
    openStream();
  }

  // Back online: do not wait for the rest of the backoff.
  window.addEventListener('online', () => { if (isLive() && S.loaded && !es) { clearTimeout(esTimer); reconnect(); } });

  async function streamEnded() {
    await catchUp();            // belt and braces: anything the stream did not deliver
    if (pending.size) await fillGap();
    finish();
  }

  function finish() {
    if (isLive() && S.loaded) render(); // the last lines, still following the tail
    S.finished = true;
    closeStream();
    setConnected(false);
    clearTimeout(esTimer);
    // The last step_status events may trail the log's end: keep the build
    // events a little longer (until their own `end` or 5 s).
    if (evSrc) evTimer = setTimeout(closeEvents, 5000); else closeEvents();
    followLabel.hidden = true;
    invalidateHeaders();
    scheduleRender();
  }

  // ---- build events (step headers while the job is live) ----------------------
  let evSrc = null, evTimer = 0, evAttempt = 0;

  function openEvents() {
    if (!isLive() || !cfg.eventsUrl || evSrc) return;
    const src = new EventSource(new URL(cfg.eventsUrl, location.href).toString());
    evSrc = src;
    src.onopen = () => { evAttempt = 0; };
    src.addEventListener('step_status', (ev) => onStepEvent(ev.data));
    src.addEventListener('end', () => { if (evSrc === src) closeEvents(); });
    src.onerror = () => {
      // EventSource retries by itself unless the response was an HTTP error.
      if (evSrc === src && src.readyState === EventSource.CLOSED) {
        evSrc = null;
        if (isLive()) evTimer = setTimeout(openEvents, backoff(evAttempt++));
        else closeEvents();
      }
    };
  }

  function closeEvents() {
    clearTimeout(evTimer);
    if (evSrc) { evSrc.close(); evSrc = null; }
    if (S.finished || cfg.finished) clearInterval(ticker);
  }

  function onStepEvent(data) {
    let ev;
    try { ev = JSON.parse(data); } catch (_) { return; }
    const p = ev && ev.payload;
    if (!p || p.job !== cfg.job || !Number.isInteger(p.step)) return;
    let st = steps.find((s) => s.idx === p.step);
    if (!st) {
      st = normStep({ idx: p.step, name: p.name });
      steps = [...steps, st].sort((a, b) => a.idx - b.idx);
    }
    if (typeof p.name === 'string' && p.name) st.name = p.name;
    if (STATUSES.includes(p.status)) st.status = p.status;
    if (Number.isInteger(p.first_line) && p.first_line >= 1) st.first_line = p.first_line;
    const at = typeof ev.created_ms === 'number' ? ev.created_ms : Date.now();
    if (st.status === 'running' && st.started_ms == null) st.started_ms = at;
    if (TERMINAL.has(st.status) && st.started_ms != null && st.finished_ms == null) st.finished_ms = at;
    layoutChanged();
    invalidateHeaders();
    scheduleRender();
  }

  // Running steps show a ticking duration.
  const ticker = setInterval(() => {
    if (steps.some((s) => s.status === 'running' && s.started_ms != null)) { invalidateHeaders(); scheduleRender(); }
  }, 1000);

  // ---- search ------------------------------------------------------------
  // Matches are kept as two parallel arrays (line number, offset in the
  // plain text), in order; the scan runs in slices of a few ms so typing stays
  // responsive, and continues as more lines arrive.
  const search = { q: '', ml: [], mp: [], scanned: 0, cur: -1, anchor: 1, queued: false, timer: 0 };

  function setQuery(raw) {
    clearTimeout(search.timer);
    search.timer = 0;
    const q = raw.toLowerCase();
    if (q === search.q) return;
    Object.assign(search, { q, ml: [], mp: [], scanned: 0, cur: -1, anchor: q ? topVisibleLine() : 1 });
    invalidate();
    updateCount();
    scheduleScan();
    scheduleRender();
  }

  function scheduleScan() {
    if (!search.q || search.queued || search.scanned >= lines.length) return;
    search.queued = true;
    setTimeout(scanSlice, 0);
  }

  function scanSlice() {
    search.queued = false;
    const q = search.q;
    if (!q) return;
    const t0 = performance.now();
    const found0 = search.ml.length;
    let i = search.scanned;
    const n = lines.length;
    while (i < n) {
      const s = lowerOf(i);
      for (let k = s.indexOf(q); k >= 0; k = s.indexOf(q, k + q.length)) { search.ml.push(i + 1); search.mp.push(k); }
      i++;
      if ((i & 1023) === 0 && performance.now() - t0 > SEARCH_SLICE_MS) break;
    }
    search.scanned = i;
    // The first match at or after where the reader was becomes current.
    if (search.cur < 0) {
      for (let j = found0; j < search.ml.length; j++) {
        if (search.ml[j] >= search.anchor) { selectMatch(j); break; }
      }
      if (search.cur < 0 && i >= n && search.ml.length && S.loaded && !isLive()) selectMatch(0);
    }
    updateCount();
    if (i < lines.length) scheduleScan();
  }

  function selectMatch(j) {
    search.cur = j;
    scrollToLine(search.ml[j], false);
    revealMatch = true;
    invalidate();
    updateCount();
    scheduleRender();
  }

  function stepMatch(dir) {
    if (search.timer) { // typed but not searched yet: search now, its first match becomes current
      const changed = searchInput.value.toLowerCase() !== search.q;
      setQuery(searchInput.value);
      if (changed) { if (search.q) scanSlice(); return; }
    }
    const N = search.ml.length;
    if (!N) return;
    selectMatch(search.cur < 0 ? (dir > 0 ? 0 : N - 1) : (search.cur + dir + N) % N);
  }

  function updateCount() {
    const N = search.ml.length;
    const text = search.q ? `${search.cur >= 0 ? search.cur + 1 : 0} / ${N}` : '';
    if (searchCount.textContent !== text) searchCount.textContent = text;
    searchCount.classList.toggle('log-searching', !!search.q && search.scanned < lines.length);
    searchCount.classList.toggle('log-no-match', !!search.q && N === 0 && search.scanned >= lines.length);
  }

  // ---- selection and permalinks ---------------------------------------------
  function parseHash(hash) {
    const m = /^#L(\d+)(?:-L?(\d+))?$/.exec(hash || '');
    if (!m) return null;
    const a = parseInt(m[1], 10), b = m[2] ? parseInt(m[2], 10) : a;
    return a >= 1 ? { from: Math.min(a, b), to: Math.max(a, b) } : null;
  }

  function applyHash() {
    const sel = parseHash(location.hash);
    if (!sel) return;
    selection = sel;
    selAnchor = sel.from;
    pendingJump = sel.from;
    invalidate();
    scheduleRender();
  }

  function selectLines(n, extend) {
    selection = extend && selAnchor ? { from: Math.min(selAnchor, n), to: Math.max(selAnchor, n) } : { from: n, to: n };
    if (!extend) selAnchor = n;
    const hash = selection.from === selection.to ? `#L${selection.from}` : `#L${selection.from}-L${selection.to}`;
    history.replaceState(history.state, '', hash); // sets location.hash without jumping
    invalidate();
    scheduleRender();
  }

  // ---- collapse ------------------------------------------------------------
  function toggleStep(idx) {
    if (collapsed.has(idx)) collapsed.delete(idx); else collapsed.add(idx);
    layoutChanged();
    invalidateHeaders();
    scheduleRender();
  }

  function setAllCollapsed(on) {
    const anchor = topVisibleLine();
    collapsed.clear();
    if (on) for (const st of steps) collapsed.add(st.idx);
    layoutChanged();
    invalidateHeaders();
    if (on) { scroller.scrollTop = 0; scroller.scrollLeft = 0; } else scrollToLine(anchor, true);
    scheduleRender();
  }

  // ---- event wiring ---------------------------------------------------------
  scroller.addEventListener('scroll', scheduleRender, { passive: true });
  if (window.ResizeObserver) new ResizeObserver(scheduleRender).observe(scroller);
  else window.addEventListener('resize', scheduleRender);

  rowsBox.addEventListener('click', (e) => {
    const a = e.target.closest('a.log-ln');
    if (a) {
      if (e.ctrlKey || e.metaKey || e.altKey || e.button !== 0) return; // new tab etc.
      e.preventDefault();
      selectLines(parseInt(a.closest('.log-line').dataset.key, 10), e.shiftKey);
      return;
    }
    const hd = e.target.closest('.log-step');
    if (hd) toggleStep(parseInt(hd.dataset.step, 10));
  });
  rowsBox.addEventListener('keydown', (e) => {
    const hd = e.target.closest('.log-step');
    if (hd && (e.key === 'Enter' || e.key === ' ')) {
      e.preventDefault();
      toggleStep(parseInt(hd.dataset.step, 10));
    }
  });

  searchInput.addEventListener('input', () => {
    clearTimeout(search.timer);
    search.timer = setTimeout(() => setQuery(searchInput.value), SEARCH_DEBOUNCE_MS);
  });
  searchInput.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); stepMatch(e.shiftKey ? -1 : 1); }
    else if (e.key === 'Escape' && searchInput.value) { e.preventDefault(); searchInput.value = ''; setQuery(''); }
  });
  nextBtn.addEventListener('click', () => stepMatch(1));
  prevBtn.addEventListener('click', () => stepMatch(-1));
  expandBtn.addEventListener('click', () => setAllCollapsed(false));
  collapseBtn.addEventListener('click', () => setAllCollapsed(true));
  followBox.addEventListener('change', () => {
    if (followBox.checked) { scroller.scrollTop = scroller.scrollHeight; scheduleRender(); }
  });
  window.addEventListener('hashchange', applyHash);

  // ---- test/bench hook -------------------------------------------------------
  window.chengisLog = {
    /** Loaded line objects {number, stream, time_ms, text} in order. */
    get lines() { return lines; },
    /** Highest consecutive line number loaded. */
    get last() { return lines.length; },
    get finished() { return S.finished; },
    /** The lines that existed at load time are all loaded. */
    get loaded() { return S.loaded; },
    /** performance.now() when the first screen of rows was in the DOM. */
    get firstScreenMs() { return S.firstScreenMs; },
    get connected() { return S.connected; },
    get reconnects() { return S.reconnects; },
    get steps() { return steps; },
    get searchMatches() { return search.ml.length; },
    rowHeight: ROW_H,
    scrollToLine: (n) => scrollToLine(n, true),
  };

  // ---- start -----------------------------------------------------------------
  async function main() {
    applyHash();
    updateStatus();
    if (!cfg.finished) openEvents();
    await loadBacklog();
    S.loaded = true;
    if (cfg.finished || S.serverFinished) { finish(); return; }
    // A live log opens at its tail unless a permalink or the reader chose a place.
    if (followBox.checked && !selection && scroller.scrollTop === 0) {
      applyHeight();
      scroller.scrollTop = scroller.scrollHeight;
    }
    scheduleRender();
    openStream();
  }
  main();
})();
