// The browser client of chat-server: one WebSocket (/ws) carrying the JSON dialect of
// protocol.md, one JSON command per frame out, one JSON event per frame in.
//
// Security rule for this whole file: text that came from the network (nicknames, messages,
// topics, reasons, server texts) only ever reaches the page through textContent or text
// nodes (see el() and txt()); never innerHTML, never eval, never attributes that run code.
"use strict";

(() => {
  const $ = (selector) => document.querySelector(selector);

  // --- small DOM helpers: the only way text gets into the page --------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // Peer text in its own bidi-isolated span: dir="auto" plus `unicode-bidi: isolate` in the
  // stylesheet, so right-to-left text (or a stray override) cannot reorder what is around it.
  function txt(text, className = "text") {
    const span = el("span", className, text);
    span.dir = "auto";
    return span;
  }

  const nickSpan = (nick) => txt(nick, "nick");

  const pad = (n) => String(n).padStart(2, "0");

  function timeEl(ts) {
    const date = typeof ts === "number" && ts > 0 ? new Date(ts * 1000) : new Date();
    const node = el("time", "ts", `${pad(date.getHours())}:${pad(date.getMinutes())}`);
    node.dateTime = date.toISOString();
    node.title = date.toLocaleString();
    return node;
  }

  const lower = (s) => String(s || "").toLowerCase();
  const same = (a, b) => a != null && b != null && lower(a) === lower(b);

  // --- the page's elements ----------------------------------------------------------------

  const ui = {
    status: $("#status"),
    login: $("#login"),
    nickForm: $("#nick-form"),
    nickInput: $("#nick-form input[name=nick]"),
    passwordRow: $("#password-row"),
    passwordInput: $("#nick-form input[name=password]"),
    loginError: $("#login-error"),
    chat: $("#chat"),
    tabs: $("#tabs"),
    topic: $("#topic"),
    logWrap: $("#log-wrap"),
    members: $("#members"),
    membersPanel: $("#members-panel"),
    membersToggle: $("#members-toggle"),
    memberCount: $("#member-count"),
    sendForm: $("#send-form"),
    input: $("#input"),
  };

  // --- state ------------------------------------------------------------------------------

  const MAX_LINES = 2000; // per tab: the oldest lines go, so a long session stays light
  const NO_RECONNECT = new Set(["quit", "ghosted", "killed", "banned", "too_many_errors",
    "register_timeout", "not_chat"]);

  const state = {
    ws: null,
    nick: null, // the nickname we have (or are asking for)
    password: null, // kept in memory only, to log in again on reconnect
    passwordNick: null, // the nickname that password belongs to
    registered: false,
    everRegistered: false, // a welcome came once: later welcomes are reconnections
    wanted: false, // the user asked to connect
    stop: false, // do not reconnect (we quit, were killed, ghosted...)
    delay: 1000, // the next reconnection delay, ms
    upTimer: 0,
    retryTimer: 0,
    nextId: 1,
    pending: new Map(), // request id -> {tab: key of the tab it was sent from, quiet}
    tabs: new Map(), // key -> tab; keys are lower case: "#room", "@nick", "*"
    active: null,
    drawerOpen: false,
  };

  function setStatus(text) {
    ui.status.textContent = text;
  }

  // --- tabs -------------------------------------------------------------------------------

  // kind: "room" (key "#name"), "private" (key "@nick") or "server" (key "*": where lines go
  // when no room or conversation is open).
  function keyOf(kind, name) {
    if (kind === "room") return lower(name);
    if (kind === "private") return "@" + lower(name);
    return "*";
  }

  function getTab(kind, name) {
    return state.tabs.get(keyOf(kind, name)) || null;
  }

  function ensureTab(kind, name) {
    const key = keyOf(kind, name);
    let tab = state.tabs.get(key);
    if (tab) return tab;
    tab = {
      key, kind, name: kind === "server" ? "server" : name,
      unread: 0, mention: false, joined: kind === "room", topic: null,
      members: new Map(), // lower nick -> {nick, op, voice}
      seen: new Set(), // ids of messages shown: history replayed on rejoin is not shown twice
      inHistory: false, stick: true, scrollTop: 0,
    };
    // The log of this tab: detached while the tab is inactive; the active one is #log.
    tab.box = el("div", "log");
    tab.box.setAttribute("role", "log");
    tab.box.setAttribute("aria-live", "polite");
    tab.box.tabIndex = 0; // scrollable by keyboard
    tab.box.addEventListener("scroll", () => {
      if (state.active === tab) tab.stick = nearBottom(tab.box);
    });

    const wrap = el("span", "tabwrap");
    wrap.setAttribute("role", "presentation");
    const button = el("button", "tab");
    button.type = "button";
    button.setAttribute("role", "tab");
    button.setAttribute("aria-selected", "false");
    button.setAttribute("aria-controls", "log");
    button.dataset.tab = kind === "room" ? name : kind === "private" ? "@" + name : "*";
    tab.label = el("span", "label", button.dataset.tab);
    tab.label.dir = "auto";
    tab.unreadEl = el("span", "unread");
    tab.unreadEl.hidden = true;
    button.append(tab.label, " ", tab.unreadEl);
    button.addEventListener("click", (event) => {
      activate(tab);
      if (event.detail > 0) ui.input.focus(); // a mouse click: ready to type; keyboard: stay
    });
    const close = el("button", "close", "×");
    close.type = "button";
    close.setAttribute("aria-label", `Close ${button.dataset.tab}`);
    close.title = kind === "room" ? "Leave this room" : "Close";
    close.addEventListener("click", () => closeTab(tab, true));
    wrap.append(button, close);
    tab.button = button;
    tab.closeButton = close;
    tab.wrap = wrap;

    // #lobby is the first tab; the rest in the order they were opened.
    if (key === "#lobby") ui.tabs.prepend(wrap);
    else ui.tabs.append(wrap);
    state.tabs.set(key, tab);
    if (!state.active) activate(tab);
    return tab;
  }

  function setTabName(tab, kind, name) {
    state.tabs.delete(tab.key);
    tab.key = keyOf(kind, name);
    tab.name = name;
    tab.button.dataset.tab = kind === "private" ? "@" + name : name;
    tab.label.textContent = tab.button.dataset.tab;
    tab.closeButton.setAttribute("aria-label", `Close ${tab.button.dataset.tab}`);
    state.tabs.set(tab.key, tab);
    if (state.active === tab) renderSide();
  }

  function nearBottom(box) {
    return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  }

  function activate(tab) {
    const old = state.active;
    if (old && old !== tab) {
      old.stick = nearBottom(old.box);
      old.scrollTop = old.box.scrollTop;
      old.box.removeAttribute("id");
      old.button.setAttribute("aria-selected", "false");
      old.button.classList.remove("active");
    }
    state.active = tab;
    tab.box.id = "log";
    ui.logWrap.replaceChildren(tab.box);
    tab.button.setAttribute("aria-selected", "true");
    tab.button.classList.add("active");
    tab.box.scrollTop = tab.stick ? tab.box.scrollHeight : tab.scrollTop;
    tab.unread = 0;
    tab.mention = false;
    renderBadge(tab);
    renderSide();
  }

  function tabList() {
    return Array.from(ui.tabs.querySelectorAll("[role=tab]"))
      .map((button) => Array.from(state.tabs.values()).find((t) => t.button === button))
      .filter(Boolean);
  }

  function cycle(step) {
    const tabs = tabList();
    if (tabs.length < 2) return;
    const index = tabs.indexOf(state.active);
    const next = tabs[(index + step + tabs.length) % tabs.length];
    const focusTab = document.activeElement && document.activeElement.getAttribute("role") === "tab";
    activate(next);
    if (focusTab) next.button.focus();
  }

  // Remove a tab. `byUser`: the close button or /close, so a joined room is parted first
  // (the tab then goes when our own part event arrives).
  function closeTab(tab, byUser) {
    if (byUser && tab.kind === "room" && tab.joined && state.registered) {
      send({ type: "part", room: tab.name }, { tab });
      return;
    }
    const tabs = tabList();
    const index = tabs.indexOf(tab);
    tab.wrap.remove();
    state.tabs.delete(tab.key);
    if (state.active === tab) {
      state.active = null;
      const rest = tabs.filter((t) => t !== tab);
      if (rest.length) activate(rest[Math.max(0, index - 1)]);
      else {
        ui.logWrap.replaceChildren();
        renderSide();
      }
    }
    if (byUser) ui.input.focus();
  }

  function renderBadge(tab) {
    tab.unreadEl.textContent = tab.unread ? String(tab.unread) : "";
    tab.unreadEl.hidden = !tab.unread;
    tab.button.classList.toggle("mention", tab.mention);
    tab.button.setAttribute("aria-label",
      tab.button.dataset.tab + (tab.unread ? `, ${tab.unread} unread` : "") +
      (tab.mention ? ", mentioned" : ""));
    let total = 0;
    for (const t of state.tabs.values()) total += t.unread;
    document.title = total ? `(${total}) chat` : "chat";
  }

  // The topic line and the member list follow the active tab.
  function renderSide() {
    const tab = state.active;
    ui.topic.classList.remove("empty");
    if (!tab) {
      ui.topic.textContent = "";
    } else if (tab.kind === "private") {
      ui.topic.textContent = `Private conversation with ${tab.name}`;
    } else if (tab.kind === "room" && !tab.joined) {
      ui.topic.textContent = `You are not in ${tab.name}.`;
    } else if (tab.kind === "room" && tab.topic) {
      ui.topic.textContent = tab.topic;
    } else {
      ui.topic.textContent = tab.kind === "room" ? "No topic is set." : "Server messages";
      ui.topic.classList.add("empty");
    }
    renderMembers();
  }

  function rank(member) {
    return member.op ? 0 : member.voice ? 1 : 2;
  }

  function renderMembers() {
    const tab = state.active;
    const items = [];
    if (tab && tab.kind === "room") {
      const members = Array.from(tab.members.values()).sort((a, b) =>
        rank(a) - rank(b) || lower(a.nick).localeCompare(lower(b.nick)));
      for (const member of members) {
        const li = el("li");
        li.dataset.nick = member.nick;
        // Each member is a button: opens a private conversation (Enter or click).
        const button = el("button", "member");
        button.type = "button";
        button.title = `Private message to ${member.nick}`;
        const prefix = member.op ? "@" : member.voice ? "+" : "";
        if (prefix) button.append(el("span", "prefix", prefix));
        button.append(nickSpan(member.nick));
        if (member.op) li.classList.add("op");
        else if (member.voice) li.classList.add("voice");
        button.addEventListener("click", () => {
          if (same(member.nick, state.nick)) return;
          activate(ensureTab("private", member.nick));
          setDrawer(false);
          ui.input.focus();
        });
        li.append(button);
        items.push(li);
      }
    }
    ui.members.replaceChildren(...items);
    ui.memberCount.textContent = String(items.length);
    ui.membersPanel.classList.toggle("none", !(tab && tab.kind === "room"));
  }

  // --- the log ----------------------------------------------------------------------------

  function divider(label) {
    const node = el("div", "divider", label);
    node.setAttribute("role", "separator");
    return node;
  }

  // One .line per event: its time, then `parts` (strings are our own words; peer text comes
  // as nodes built by txt()). opts: cls (extra class), mention, count (counts as unread).
  function addLine(tab, type, ev, parts, opts = {}) {
    if (!tab) tab = fallbackTab();
    const history = Boolean(ev && ev.history);
    const isMessage = type === "message" || type === "action" || type === "private";
    if (isMessage && ev && ev.id) {
      if (tab.seen.has(ev.id)) return null; // replayed again on rejoin: already shown
      if (tab.seen.size > 5 * MAX_LINES) tab.seen.clear();
      tab.seen.add(ev.id);
    }
    const box = tab.box;
    const stick = state.active === tab ? nearBottom(box) : tab.stick;
    // Replayed history sits under a "history" divider; live lines after it under "live".
    if (history && !tab.inHistory) box.append(divider("history"));
    else if (!history && tab.inHistory) box.append(divider("live"));
    tab.inHistory = history;

    const line = el("div", "line");
    line.dataset.type = type;
    if (history) line.classList.add("history");
    if (opts.cls) line.classList.add(opts.cls);
    if (opts.mention) line.classList.add("mention");
    line.append(timeEl(ev && ev.ts), " ");
    for (const part of parts) line.append(part);
    box.append(line);
    while (box.childElementCount > MAX_LINES) box.firstElementChild.remove();

    if (state.active === tab) {
      if (stick) box.scrollTop = box.scrollHeight;
    } else {
      tab.stick = stick;
      if (opts.count && !history) {
        tab.unread += 1;
        if (opts.mention) tab.mention = true;
        renderBadge(tab);
      }
    }
    return line;
  }

  function fallbackTab() {
    return state.active || getTab("room", "#lobby") || ensureTab("server", "*");
  }

  function info(tab, text, type = "notice", ev = null) {
    return addLine(tab, type, ev, [txt(text)]);
  }

  function localError(text, tab = null) {
    return addLine(tab, "error", null, [txt(text)], { cls: "error" });
  }

  // A line mentions us when it has our nickname as a whole word, in any case. Nicknames are
  // ASCII letters, digits, _ and -, so "a whole word" is "not next to one of those".
  function mentions(text) {
    if (!state.nick || !text) return false;
    const escaped = state.nick.replace(/[^A-Za-z0-9_]/g, "\\$&");
    return new RegExp(`(^|[^A-Za-z0-9_-])${escaped}($|[^A-Za-z0-9_-])`, "i").test(text);
  }

  // --- members ----------------------------------------------------------------------------

  function addMember(tab, nick, flags = {}) {
    tab.members.set(lower(nick), { nick, op: Boolean(flags.op), voice: Boolean(flags.voice) });
  }

  function refreshIfActive(tab) {
    if (state.active === tab) renderSide();
  }

  function roomTabsWith(nick) {
    return Array.from(state.tabs.values()).filter((t) => t.kind === "room" && t.members.has(lower(nick)));
  }

  // --- the connection ---------------------------------------------------------------------

  function wsUrl() {
    return (location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host + "/ws";
  }

  function connect() {
    clearInterval(state.retryTimer);
    state.retryTimer = 0;
    state.stop = false;
    setStatus("Connecting…");
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (err) {
      setStatus(`Cannot connect: ${err.message}`);
      return;
    }
    state.ws = ws;
    ws.addEventListener("open", () => {
      if (state.ws !== ws) return;
      setStatus("Connected; registering…");
      // The backoff starts over only once a connection has proved itself for 10 s.
      state.upTimer = setTimeout(() => { state.delay = 1000; }, 10000);
      sendHello();
    });
    ws.addEventListener("message", (message) => {
      if (state.ws !== ws || typeof message.data !== "string") return;
      let ev;
      try {
        ev = JSON.parse(message.data);
      } catch {
        return; // not JSON: nothing the protocol sends over a WebSocket
      }
      if (ev && typeof ev === "object" && typeof ev.type === "string") handle(ev);
    });
    ws.addEventListener("close", () => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.registered = false;
      clearTimeout(state.upTimer);
      for (const tab of state.tabs.values()) tab.members.clear();
      renderSide();
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    if (state.stop || !state.wanted) {
      if (!ui.status.textContent.startsWith("Disconnected")) setStatus("Disconnected.");
      if (!state.everRegistered || state.stop) showLogin(ui.status.textContent);
      return;
    }
    let left = Math.round(state.delay / 1000);
    state.delay = Math.min(state.delay * 2, 30000);
    const tick = () => {
      if (left <= 0) {
        connect();
        return;
      }
      setStatus(`Connection lost; retrying in ${left} s…`);
      left -= 1;
    };
    tick();
    state.retryTimer = setInterval(tick, 1000);
  }

  function sendHello() {
    const hello = { type: "hello", nick: state.nick };
    if (state.password && same(state.passwordNick, state.nick)) hello.password = state.password;
    send(hello, { tab: null });
  }

  // Send one command; its request id remembers the tab it came from, so the answers (which
  // carry `re`) are shown there. Returns the id, or null when not connected.
  function send(command, { tab = state.active, quiet = false } = {}) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      localError("Not connected: nothing was sent. Waiting to reconnect…");
      return null;
    }
    const id = `r${state.nextId++}`;
    state.pending.set(id, { tab: tab ? tab.key : null, quiet });
    if (state.pending.size > 500) state.pending.delete(state.pending.keys().next().value);
    ws.send(JSON.stringify({ ...command, id }));
    return id;
  }

  // --- login ------------------------------------------------------------------------------

  function showLogin(message = "") {
    ui.chat.hidden = true;
    ui.login.hidden = false;
    ui.loginError.textContent = message;
    const field = ui.passwordRow.hidden ? ui.nickInput : ui.passwordInput;
    field.focus();
    field.select();
  }

  function showChat() {
    ui.login.hidden = true;
    ui.chat.hidden = false;
    ui.loginError.textContent = "";
  }

  function askPassword(show) {
    ui.passwordRow.hidden = !show;
    if (!show) ui.passwordInput.value = "";
  }

  ui.nickForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const nick = ui.nickInput.value.trim();
    if (!nick) {
      showLogin("Type a nickname.");
      return;
    }
    const asking = !ui.passwordRow.hidden;
    const password = asking ? ui.passwordInput.value : "";
    if (asking && !password.trim()) { // an empty password: choose another nickname
      askPassword(false);
      showLogin("Choose another nickname, or type the password.");
      return;
    }
    const sameNick = same(nick, state.nick);
    if (asking && !sameNick) askPassword(false); // a new name: a new question
    state.nick = nick;
    state.password = asking && sameNick ? password : null;
    state.passwordNick = state.password ? nick : null;
    ui.loginError.textContent = "";
    state.wanted = true;
    if (state.ws && state.ws.readyState === WebSocket.OPEN) sendHello();
    else if (!state.ws) {
      state.delay = 1000;
      connect();
    }
  });

  function loginRefused(ev) {
    const code = ev.code;
    if (code === "nick_registered") {
      askPassword(true);
    } else if (code === "wrong_password" || code === "login_throttled") {
      ui.passwordInput.value = "";
      state.password = null;
    } else {
      askPassword(false); // nick_taken, nick_invalid, ...: ask for the nickname again
      state.password = null;
    }
    setStatus("Connected; choose a nickname.");
    showLogin(ev.text || code);
  }

  // --- events -----------------------------------------------------------------------------

  function handle(ev) {
    const request = ev.re != null ? state.pending.get(ev.re) : undefined;
    const asked = request && request.tab ? state.tabs.get(request.tab) || null : null;
    const handler = HANDLERS[ev.type];
    // `asked` may be null (no request, or its tab is gone): addLine then picks a tab.
    if (handler) handler(ev, { request, asked });
    else if (ev.text) info(asked || (ev.room && getTab("room", ev.room)), ev.text, ev.type, ev);
  }

  const me = (nick) => same(nick, state.nick);

  const HANDLERS = {
    hello() {
      setStatus("Connected; registering…");
    },

    welcome(ev) {
      const reconnect = state.everRegistered;
      state.registered = true;
      state.everRegistered = true;
      state.nick = ev.nick || state.nick;
      setStatus(`Connected as ${state.nick}` + (ev.account ? " (logged in)" : ""));
      showChat();
      const lobby = ensureTab("room", "#lobby");
      lobby.joined = true;
      info(lobby, ev.text || `Welcome, ${state.nick}!`, "welcome", ev);
      if (reconnect) rejoin();
      else ui.input.focus();
    },

    join(ev, { request }) {
      const tab = ensureTab("room", ev.room);
      if (me(ev.nick)) {
        tab.joined = true;
        tab.members.clear();
        tab.button.classList.remove("left");
        if (request && !request.quiet) activate(tab);
      }
      addMember(tab, ev.nick);
      addLine(tab, "join", ev, ["→ ", nickSpan(ev.nick), ` joined ${ev.room}`]);
      refreshIfActive(tab);
    },

    part(ev, { asked }) {
      const tab = getTab("room", ev.room);
      const reason = ev.text ? [" (", txt(ev.text), ")"] : [];
      if (me(ev.nick)) {
        if (tab) closeTab(tab, false);
        const where = asked && state.tabs.has(asked.key) ? asked : null;
        addLine(where, "part", ev, [`← You left ${ev.room}`, ...reason]);
        return;
      }
      if (!tab) return;
      tab.members.delete(lower(ev.nick));
      addLine(tab, "part", ev, ["← ", nickSpan(ev.nick), ` left ${ev.room}`, ...reason]);
      refreshIfActive(tab);
    },

    quit(ev) {
      const reason = ev.text ? [" (", txt(ev.text), ")"] : [];
      const tabs = roomTabsWith(ev.nick);
      const query = getTab("private", ev.nick);
      if (query) tabs.push(query);
      for (const tab of tabs) {
        tab.members.delete(lower(ev.nick));
        addLine(tab, "quit", ev, ["← ", nickSpan(ev.nick), " quit", ...reason]);
        refreshIfActive(tab);
      }
    },

    nick(ev, { asked }) {
      const old = ev.nick;
      const renamed = ev.new_nick;
      const self = me(old);
      const tabs = roomTabsWith(old);
      if (self) {
        state.nick = renamed;
        setStatus(`Connected as ${renamed}`);
      }
      const query = getTab("private", old);
      if (query && !getTab("private", renamed)) setTabName(query, "private", renamed);
      if (query) tabs.push(query);
      if (self && !tabs.length) tabs.push(asked || fallbackTab());
      const parts = self ? [`You are now known as `, nickSpan(renamed)]
        : [nickSpan(old), " is now known as ", nickSpan(renamed)];
      for (const tab of tabs) {
        const member = tab.members.get(lower(old));
        if (member) {
          tab.members.delete(lower(old));
          addMember(tab, renamed, member);
        }
        addLine(tab, "nick", ev, parts.map((p) => (typeof p === "string" ? p : p.cloneNode(true))));
        refreshIfActive(tab);
      }
    },

    message(ev) {
      const tab = ensureTab("room", ev.room);
      const own = me(ev.nick);
      const mention = !own && !ev.history && mentions(ev.text);
      const parts = ev.notice ? ["-", nickSpan(ev.nick), "- ", txt(ev.text)]
        : ["<", nickSpan(ev.nick), "> ", txt(ev.text)];
      addLine(tab, "message", ev, parts, { mention, count: !own, cls: ev.notice ? "notice" : "" });
    },

    action(ev) {
      const tab = ensureTab("room", ev.room);
      const own = me(ev.nick);
      const mention = !own && !ev.history && mentions(ev.text);
      addLine(tab, "action", ev, ["* ", nickSpan(ev.nick), " ", txt(ev.text)], { mention, count: !own });
    },

    private(ev) {
      // echo: our own copy of what we sent to `target`; otherwise a message from `nick`.
      const peer = ev.echo ? ev.target : ev.nick;
      const tab = ensureTab("private", peer);
      const from = ev.nick || state.nick;
      const parts = ev.notice ? ["-", nickSpan(from), "- ", txt(ev.text)]
        : ["<", nickSpan(from), "> ", txt(ev.text)];
      addLine(tab, "private", ev, parts, { mention: !ev.echo, count: !ev.echo, cls: ev.notice ? "notice" : "" });
    },

    topic(ev, { asked }) {
      const tab = getTab("room", ev.room);
      if (tab) {
        tab.topic = ev.text || null;
        refreshIfActive(tab);
      }
      if (ev.nick) { // a change: shown in the room
        const parts = ev.text ? [nickSpan(ev.nick), " set the topic: ", txt(ev.text)]
          : [nickSpan(ev.nick), " cleared the topic"];
        addLine(tab || asked, "topic", ev, parts);
        return;
      }
      const where = ev.re != null ? asked : tab || asked;
      const parts = ev.text ? [`Topic of ${ev.room}: `, txt(ev.text)] : [`No topic is set in ${ev.room}`];
      if (ev.text && ev.by) {
        parts.push(" (set by ", nickSpan(ev.by));
        if (ev.at) parts.push(` on ${new Date(ev.at * 1000).toLocaleString()}`);
        parts.push(")");
      }
      addLine(where, "topic", ev, parts);
    },

    who(ev, { asked }) {
      const tab = getTab("room", ev.room);
      const members = Array.isArray(ev.members) ? ev.members : [];
      const ops = new Set((ev.operators || []).map(lower));
      const voiced = new Set((ev.voiced || []).map(lower));
      if (tab && tab.joined) {
        tab.members.clear();
        for (const nick of members) addMember(tab, nick, { op: ops.has(lower(nick)), voice: voiced.has(lower(nick)) });
        refreshIfActive(tab);
      }
      const shown = members.map((n) => (ops.has(lower(n)) ? "@" : voiced.has(lower(n)) ? "+" : "") + n);
      addLine(ev.re != null ? asked : tab || asked, "who", ev,
        [`${members.length} in ${ev.room}: `, txt(shown.join(", "))]);
    },

    mode(ev, { asked }) {
      const tab = getTab("room", ev.room);
      const change = String(ev.change || "");
      const member = tab && ev.target ? tab.members.get(lower(ev.target)) : null;
      if (member && /^[+-][ov]$/.test(change)) {
        member[change[1] === "o" ? "op" : "voice"] = change[0] === "+";
        refreshIfActive(tab);
      }
      const parts = [ev.nick ? nickSpan(ev.nick) : "The server", ` sets ${change}`];
      if (ev.target) parts.push(" ", txt(ev.target));
      if (ev.text) parts.push(" (", txt(ev.text), ")");
      addLine(tab || asked, "mode", ev, parts);
    },

    modes(ev, { asked }) {
      const parts = [`Modes of ${ev.room}: ${ev.modes ? "+" + ev.modes : "none"}`];
      if (ev.owner) parts.push("; owned by ", txt(ev.owner));
      addLine(asked, "modes", ev, parts);
    },

    kick(ev, { asked }) {
      const tab = getTab("room", ev.room);
      const reason = ev.text ? [" (", txt(ev.text), ")"] : [];
      if (tab) {
        tab.members.delete(lower(ev.target));
        if (me(ev.target)) { // we are out; the tab stays so the reason can be read
          tab.joined = false;
          tab.members.clear();
          tab.button.classList.add("left");
        }
        refreshIfActive(tab);
      }
      const who = me(ev.target) ? ["You were"] : [nickSpan(ev.target), " was"];
      addLine(tab || asked, "kick", ev,
        [...who, ` removed from ${ev.room} by `, ev.nick ? nickSpan(ev.nick) : "the server", ...reason],
        { mention: me(ev.target), count: me(ev.target) });
    },

    invite(ev, { asked }) {
      const tab = getTab("room", ev.room);
      const forMe = me(ev.target);
      addLine(forMe ? asked : tab || asked, "invite", ev,
        [nickSpan(ev.nick), " invited ", nickSpan(ev.target), ` to ${ev.room}`],
        { mention: forMe, count: forMe });
    },

    bans(ev, { asked }) {
      const bans = Array.isArray(ev.bans) ? ev.bans : [];
      const lines = bans.map((b) => `${b.kind === "mute" ? "mute" : "ban"} ${b.mask}` +
        (b.by ? ` by ${b.by}` : "") + (b.reason ? `: ${b.reason}` : ""));
      addLine(asked, "bans", ev, [txt(bans.length ? `Bans and mutes in ${ev.room}:\n` +
        lines.join("\n") : `No bans or mutes in ${ev.room}.`)]);
    },

    whois(ev, { asked }) {
      const facts = [];
      if (ev.user || ev.realname) facts.push(`user ${ev.user || ev.nick}, real name ${ev.realname || ev.nick}`);
      facts.push(ev.account ? `account ${ev.account}` : "not logged in");
      if (ev.operator) facts.push("server operator");
      if (Array.isArray(ev.rooms) && ev.rooms.length) {
        const ops = new Set((ev.operator_in || []).map(lower));
        facts.push("rooms " + ev.rooms.map((r) => (ops.has(lower(r)) ? "@" : "") + r).join(" "));
      }
      if (typeof ev.idle === "number") facts.push(`idle ${formatDuration(ev.idle)}`);
      if (ev.away) facts.push(`away: ${ev.away}`);
      if (ev.since) facts.push(`connected since ${new Date(ev.since * 1000).toLocaleString()}`);
      if (ev.address) facts.push(`address ${ev.address}`);
      addLine(asked, "whois", ev, [nickSpan(ev.nick), ": ", txt(facts.join("; "))]);
    },

    away(ev, { asked }) {
      let parts;
      if (me(ev.nick)) parts = [ev.text ? "You are marked away: " : "You are back.", ...(ev.text ? [txt(ev.text)] : [])];
      else parts = [nickSpan(ev.nick), " is away: ", txt(ev.text)];
      const where = ev.re != null ? asked : getTab("private", ev.nick) || asked;
      addLine(where, "away", ev, parts);
    },

    ignores(ev, { asked }) {
      const nicks = Array.isArray(ev.nicks) ? ev.nicks : [];
      addLine(asked, "ignores", ev, [nicks.length ? "You ignore: " : "You ignore nobody.",
        ...(nicks.length ? [txt(nicks.join(", "))] : [])]);
    },

    account(ev, { asked, request }) {
      if (request && request.password !== undefined) { // remember it for reconnections
        state.password = ev.account ? request.password : null;
        state.passwordNick = ev.account ? request.loginNick || state.nick : null;
      }
      addLine(asked, "account", ev, [txt(ev.text || (ev.account
        ? `You are logged in as ${ev.account}.` : "You have no account now."))]);
    },

    rooms(ev, { asked }) {
      const rooms = Array.isArray(ev.rooms) ? ev.rooms : [];
      const offset = Number(ev.offset) || 0;
      const total = ev.total ?? rooms.length;
      const head = `${total} room${total === 1 ? "" : "s"}` +
        (rooms.length < (ev.total ?? 0) ? `; ${offset + 1}-${offset + rooms.length} here` : "") + ":";
      const lines = rooms.map((r) => `  ${r.room} (${r.members} member${r.members === 1 ? "" : "s"})` +
        (r.topic ? `: ${r.topic}` : ""));
      addLine(asked, "rooms", ev, [txt([head, ...lines].join("\n"))]);
    },

    notice(ev, { asked }) {
      const where = ev.re != null ? asked : (ev.room && getTab("room", ev.room)) || asked;
      if (ev.re != null) {
        const request = state.pending.get(ev.re);
        if (request && request.password !== undefined && request.changes) { // /password done
          state.password = request.password;
          state.passwordNick = state.nick;
        }
      }
      addLine(where, "notice", ev, [txt(ev.text)]);
    },

    error(ev, { asked }) {
      if (!state.registered && ["hello", "nick", "login"].includes(ev.command)) {
        loginRefused(ev);
        return;
      }
      addLine(asked, "error", ev, [txt(ev.text || ev.code)], { cls: "error" });
    },

    ping(ev) {
      if (state.ws && state.ws.readyState === WebSocket.OPEN) {
        state.ws.send(JSON.stringify({ type: "pong", token: ev.text || "" }));
      }
    },

    pong(ev, { asked }) {
      addLine(asked, "pong", ev, ["pong ", txt(ev.text)]);
    },

    bye(ev, { asked }) {
      if (NO_RECONNECT.has(ev.code)) state.stop = true;
      const text = `Closing connection: ${ev.text || ev.code}`;
      if (state.registered) addLine(asked, "bye", ev, [txt(text)], { cls: "error" });
      else ui.loginError.textContent = text;
      setStatus(state.stop ? `Disconnected: ${ev.text || ev.code}` : text);
    },
  };

  function formatDuration(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return `${seconds} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  }

  // After a reconnection: the server has put us in #lobby again; join the other rooms that
  // were open. Paced, so a long list stays inside the server's flood budget (5/s, burst 20).
  function rejoin() {
    const rooms = Array.from(state.tabs.values())
      .filter((t) => t.kind === "room" && t.key !== "#lobby" && t.joined);
    const ws = state.ws;
    rooms.forEach((tab, index) => {
      setTimeout(() => {
        if (state.ws === ws && state.registered) send({ type: "join", room: tab.name }, { tab, quiet: true });
      }, index < 10 ? 0 : (index - 9) * 250);
    });
  }

  // --- typed commands ---------------------------------------------------------------------

  // The server's command table (chat/commands.py, served as /commands.json), so that a
  // typed /command becomes the same JSON command it would be over telnet, read by the same
  // rules. Parameter kinds: room, nick, word, name, secret, offset, number (one word unless
  // last), text, reason, topic. Filled in at start; until then no command is known.
  const COMMANDS = {};
  const ALIASES = {};
  fetch("/commands.json")
    .then((answer) => answer.json())
    .then((specs) => {
      for (const spec of specs) {
        COMMANDS[spec.name] = spec.params;
        for (const alias of spec.aliases) ALIASES[alias] = spec.name;
      }
    })
    .catch(() => localError("Could not load the command list; reload the page."));
  const ONE_WORD = new Set(["room", "nick", "name", "offset", "number", "word", "secret"]);
  const BLANKABLE = new Set(["text", "reason", "name", "word", "secret"]);

  function usage(name) {
    const params = COMMANDS[name].map((p) => (p.required ? p.label : `[${p.label}]`));
    return new Error(`Usage: /${[name, ...params].join(" ")}`);
  }

  // Mirrors parse_text_arguments: one-word parameters take a word, the last takes the rest;
  // an optional room is only a word starting with '#', an optional offset only '+N'.
  function parseArguments(name, args) {
    const params = COMMANDS[name];
    const command = { type: name };
    let rest = args.trim();
    const set = (param, value) => {
      if (!value || (!value.trim() && BLANKABLE.has(param.kind))) {
        if (param.required) throw usage(name);
        return;
      }
      let out = value;
      switch (param.kind) {
        case "room": out = value.startsWith("#") ? value : "#" + value; break;
        case "offset":
        case "number": {
          const digits = value.trim().replace(/^\+/, "");
          if (!/^[0-9]{1,9}$/.test(digits)) throw usage(name);
          out = Number(digits);
          break;
        }
        case "name": out = value.trim().replace(/^\/+/, "").toLowerCase(); break;
        case "text": break;
        default: out = value.trim();
      }
      command[param.name] = out;
    };
    params.forEach((param, index) => {
      if (index < params.length - 1 && ONE_WORD.has(param.kind)) {
        if (param.kind === "room" && !param.required && !rest.startsWith("#")) return;
        if (param.kind === "offset" && !rest.startsWith("+")) return;
        const space = rest.indexOf(" ");
        const word = space < 0 ? rest : rest.slice(0, space);
        rest = space < 0 ? "" : rest.slice(space + 1).trim();
        set(param, word);
      } else {
        if (ONE_WORD.has(param.kind) && param.kind !== "secret" && rest.includes(" ")) throw usage(name);
        set(param, param.kind === "topic" && rest === "-delete" ? " " : rest);
        rest = "";
      }
    });
    if (rest) throw usage(name);
    return command;
  }

  // A line starting with "/". Returns true when it was sent or done (the input is cleared).
  function runCommand(line) {
    const match = /^\/(\S*)\s*([\s\S]*)$/.exec(line);
    const typed = lower(match[1]);
    const args = match[2];
    const tab = state.active;
    const room = tab && tab.kind === "room" ? tab : null;

    // Commands of this page alone.
    if (typed === "query") {
      const [nick, ...words] = args.trim().split(/\s+/);
      if (!nick) { localError("Usage: /query nick [text]"); return false; }
      const query = ensureTab("private", nick);
      activate(query);
      if (words.length) send({ type: "msg", nick, text: words.join(" ") }, { tab: query });
      return true;
    }
    if (typed === "close") {
      if (tab) closeTab(tab, true);
      return true;
    }
    if (typed === "clear") {
      if (tab) {
        tab.box.replaceChildren();
        tab.inHistory = false;
      }
      return true;
    }

    const name = ALIASES[typed] || typed;
    if (!Object.prototype.hasOwnProperty.call(COMMANDS, name)) {
      localError(`Unknown command /${match[1]}; type /help for the list.`);
      return false;
    }
    let command;
    try {
      command = parseArguments(name, args);
    } catch (err) {
      localError(err.message);
      return false;
    }
    const takesRoom = COMMANDS[name].some((p) => p.name === "room");

    if (name === "part" && !command.room && tab && tab.kind !== "room") {
      closeTab(tab, true); // /part in a private conversation: close it
      return true;
    }
    if ((name === "me" || name === "say") && !command.room && !room) {
      localError(`/${name} needs a room here: /${name} #room text`);
      return false;
    }
    if (name === "join") {
      const open = getTab("room", command.room);
      if (open && open.joined) { // already in it: just show it
        activate(open);
        return true;
      }
    }
    // The server's "active room" is the room joined last, not necessarily the tab shown:
    // name the shown room explicitly.
    if (takesRoom && !command.room && room) command.room = room.name;
    if (name === "quit") state.stop = true;

    const options = { tab };
    const id = send(command, options);
    if (id === null) return false;
    // Remember a new password for reconnections once the server accepts it.
    const request = state.pending.get(id);
    if (name === "register" || name === "login") request.password = command.password;
    if (name === "unregister") request.password = null;
    if (name === "password") {
      request.password = command.new;
      request.changes = true;
    }
    if (name === "login") request.loginNick = command.nick;
    if (name === "help" && !command.command) {
      info(tab, "This page also has /query nick, /close and /clear; Alt+←/→ or " +
        "Ctrl+PageUp/PageDown switch tabs.", "notice");
    }
    return true;
  }

  // --- typing -----------------------------------------------------------------------------

  const recall = { lines: [], index: 0 }; // Up/Down bring back what was typed

  ui.sendForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.input.value;
    if (!text.trim()) return;
    let done;
    if (text.startsWith("/") && !text.startsWith("//")) {
      done = runCommand(text);
    } else {
      const line = text.startsWith("//") ? text.slice(1) : text; // "//" says a leading "/"
      const tab = state.active;
      if (!tab || tab.kind === "server") {
        localError("You are in no room: /join #room first.");
        done = false;
      } else if (tab.kind === "room") {
        done = send({ type: "say", room: tab.name, text: line }) !== null;
      } else {
        done = send({ type: "msg", nick: tab.name, text: line }) !== null;
      }
    }
    // Passwords are not kept for recall.
    if (!/^\/(register|login|password|unregister)\b/i.test(text)) {
      recall.lines.push(text);
      if (recall.lines.length > 100) recall.lines.shift();
    }
    recall.index = recall.lines.length;
    if (done) ui.input.value = "";
  });

  ui.input.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key === "ArrowUp" && recall.index > 0) {
      recall.index -= 1;
    } else if (event.key === "ArrowDown" && recall.index < recall.lines.length) {
      recall.index += 1;
    } else {
      return;
    }
    event.preventDefault();
    ui.input.value = recall.lines[recall.index] || "";
  });

  // --- keyboard and the member drawer -----------------------------------------------------

  function setDrawer(open) {
    state.drawerOpen = open;
    ui.membersPanel.classList.toggle("open", open);
    ui.membersToggle.setAttribute("aria-expanded", String(open));
  }

  ui.membersToggle.addEventListener("click", () => {
    setDrawer(!state.drawerOpen);
    if (state.drawerOpen) {
      const first = ui.members.querySelector("button");
      if (first) first.focus();
    }
  });

  document.addEventListener("keydown", (event) => {
    const left = event.key === "ArrowLeft" || event.key === "PageUp";
    const right = event.key === "ArrowRight" || event.key === "PageDown";
    const arrows = event.altKey && (event.key === "ArrowLeft" || event.key === "ArrowRight");
    const pages = event.ctrlKey && (event.key === "PageUp" || event.key === "PageDown");
    if ((arrows || pages) && !ui.chat.hidden) {
      event.preventDefault(); // Alt+Left would otherwise go back a page
      cycle(left ? -1 : 1);
      return;
    }
    // Arrow keys on a focused tab move along the tab list (the ARIA tabs pattern).
    const plainArrow = event.key === "ArrowLeft" || event.key === "ArrowRight";
    if (!event.altKey && !event.ctrlKey && plainArrow &&
        document.activeElement && document.activeElement.getAttribute("role") === "tab") {
      event.preventDefault();
      cycle(left ? -1 : 1);
      return;
    }
    if (event.key === "Escape" && state.drawerOpen) {
      setDrawer(false);
      ui.membersToggle.focus();
    }
  });

  // --- start ------------------------------------------------------------------------------

  ui.nickInput.focus();
})();
