"""The client's state on its own: events in, panes, members, unread counts and completion
sources out. No prompt_toolkit, no sockets."""

from __future__ import annotations

import subprocess
import sys

from chat.protocol import (
    Away,
    Error,
    Join,
    Kick,
    Message,
    Mode,
    Nick,
    Notice,
    Part,
    Private,
    Quit,
    RoomInfo,
    RoomList,
    Topic,
    Welcome,
    Who,
)
from chat.tui.format import plain_text
from chat.tui.state import UNREAD_MARKER, ChatState, Link, RoomView


def texts(view: RoomView) -> list[str]:
    return [plain_text(line) for line in view.lines]


def two_rooms() -> ChatState:
    """alice in #lobby (on screen, with bob and carol) and #dev (with dave)."""
    state = ChatState("alice")
    state.apply(Join(room="#lobby", nick="alice"))
    state.apply(Who(room="#lobby", members=("alice", "bob", "carol")))
    state.apply(Join(room="#dev", nick="alice"))
    state.apply(Join(room="#dev", nick="dave"))
    return state


def test_state_does_not_import_prompt_toolkit() -> None:
    """Nor do the formatting and the line mode: only the full-screen UI needs it."""
    check = (
        "import sys, chat.tui.state, chat.tui.format, chat.tui.linemode; "
        "loaded = [m for m in sys.modules if m.startswith('prompt_toolkit')]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


# --- which pane a line goes to --------------------------------------------------------------


def test_before_any_room_lines_go_to_the_placeholder_pane() -> None:
    state = ChatState("alice")
    assert state.room is None
    assert state.view is state.nowhere
    state.apply(Welcome(nick="alice", text="Welcome, alice!"))
    assert texts(state.nowhere)[-1].endswith("--- Welcome, alice!")


def test_the_first_room_joined_is_shown_and_later_ones_open_behind_it() -> None:
    state = two_rooms()
    assert list(state.views) == ["#lobby", "#dev"]
    assert state.room == "#lobby"  # joined by the server, not asked for: no switch
    assert texts(state.views["#dev"])[-1].endswith("--> dave joined #dev")
    assert not any("dave" in line for line in texts(state.views["#lobby"]))


def test_a_room_the_user_asked_to_join_is_shown_on_arrival() -> None:
    state = two_rooms()
    state.switch_to.add("#ops")
    state.apply(Join(room="#Ops", nick="alice"))
    assert state.room == "#Ops"
    assert state.active == "#ops"
    assert state.switch_to == set()


def test_room_lines_go_to_their_room_and_the_rest_to_the_pane_on_screen() -> None:
    state = two_rooms()
    state.apply(Message(room="#dev", nick="dave", text="in dev"))
    state.apply(Message(room="#lobby", nick="bob", text="in lobby"))
    state.apply(Private(nick="dave", target="alice", text="psst"))
    state.apply(Error(code="flood", text="slow down"))
    state.apply(Notice(text="a notice"))
    lobby, dev = texts(state.views["#lobby"]), texts(state.views["#dev"])
    assert dev[-1].endswith("<dave> in dev")
    assert lobby[-3].endswith("<bob> in lobby")
    assert texts(state.views["dave"])[-1].endswith("[msg] <dave> psst")  # its own pane
    assert lobby[-2].endswith("!!! slow down")
    assert lobby[-1].endswith("--- a notice")
    assert not any("psst" in line or "slow down" in line for line in dev)
    state.switch("#dev")
    state.note("from the client")
    state.error("went wrong")
    assert texts(state.views["#dev"])[-2].endswith("from the client")
    assert texts(state.views["#dev"])[-1].endswith("!!! went wrong")


def test_the_topic_is_kept_per_room_and_cleaned() -> None:
    state = two_rooms()
    state.apply(Topic(room="#dev", nick="dave", text="ship\tit\x1b[2J"))
    assert state.views["#dev"].topic == "ship    it[2J"
    assert state.views["#lobby"].topic == ""
    assert texts(state.views["#dev"])[-1].endswith("--- dave set the topic of #dev: ship    it[2J")


# --- unread counts and switching -------------------------------------------------------------


def test_unread_counts_chat_lines_in_rooms_not_on_screen() -> None:
    state = two_rooms()
    dev = state.views["#dev"]
    assert dev.unread == 0  # joins are not unread lines
    state.apply(Message(room="#dev", nick="dave", text="one"))
    state.apply(Message(room="#dev", nick="dave", text="two", history=True))  # a replay: no
    state.apply(Message(room="#dev", nick="dave", text="three"))
    state.apply(Message(room="#lobby", nick="bob", text="on screen"))
    assert dev.unread == 2
    assert state.views["#lobby"].unread == 0
    state.switch("#dev")
    assert dev.unread == 0
    state.apply(Message(room="#dev", nick="dave", text="seen"))
    assert dev.unread == 0


def test_switching_and_cycling_panes() -> None:
    state = two_rooms()
    state.apply(Join(room="#ops", nick="alice"))
    assert list(state.views) == ["#lobby", "#dev", "#ops"]
    state.cycle(+1)
    assert state.room == "#dev"
    state.cycle(+1)
    state.cycle(+1)
    assert state.room == "#lobby"  # wraps around
    state.cycle(-1)
    assert state.room == "#ops"
    state.switch_number(2)
    assert state.room == "#dev"
    state.switch_number(4)  # no room 4: nothing happens
    state.switch_number(0)
    assert state.room == "#dev"
    state.switch("#nowhere")
    assert state.room == "#dev"


def test_leaving_the_room_on_screen_shows_the_last_one_left() -> None:
    state = two_rooms()
    state.apply(Join(room="#ops", nick="alice"))
    state.switch("#dev")
    state.apply(Part(room="#dev", nick="alice"))
    assert list(state.views) == ["#lobby", "#ops"]
    assert state.room == "#ops"
    assert texts(state.view)[-1].endswith("<-- alice left #dev")
    state.apply(Part(room="#ops", nick="alice"))
    state.apply(Part(room="#lobby", nick="alice"))
    assert state.views == {}
    assert state.room is None
    assert texts(state.view)[-1].endswith("<-- alice left #lobby")


# --- members ---------------------------------------------------------------------------------


def test_members_follow_join_part_quit_and_nick() -> None:
    state = two_rooms()
    lobby, dev = state.views["#lobby"], state.views["#dev"]
    state.apply(Join(room="#dev", nick="bob"))
    assert dev.sorted_members() == ["alice", "bob", "dave"]
    state.apply(Part(room="#dev", nick="dave", text="later"))
    assert dev.sorted_members() == ["alice", "bob"]
    assert texts(dev)[-1].endswith("<-- dave left #dev (later)")
    state.apply(Nick(nick="bob", new_nick="Robert"))
    assert lobby.sorted_members() == ["alice", "carol", "Robert"]
    assert dev.sorted_members() == ["alice", "Robert"]
    assert texts(dev)[-1].endswith("--- bob is now known as Robert")
    state.apply(Quit(nick="robert", text="gone"))  # nicknames compare case-insensitively
    assert lobby.sorted_members() == ["alice", "carol"]
    assert dev.sorted_members() == ["alice"]
    assert texts(lobby)[-1].endswith("<-- robert quit (gone)")
    assert texts(dev)[-1].endswith("<-- robert quit (gone)")


def test_a_quit_shows_only_where_the_nick_was() -> None:
    state = two_rooms()
    state.apply(Quit(nick="dave"))
    assert texts(state.views["#dev"])[-1].endswith("<-- dave quit")
    assert not any("dave" in line for line in texts(state.views["#lobby"]))


def test_who_replaces_the_member_list() -> None:
    state = two_rooms()
    state.apply(Who(room="#lobby", members=("alice", "erin")))
    assert state.views["#lobby"].sorted_members() == ["alice", "erin"]


def test_own_rename_and_welcome_change_the_nick() -> None:
    state = two_rooms()
    state.apply(Nick(nick="alice", new_nick="alicia"))
    assert state.nick == "alicia"
    assert state.views["#lobby"].sorted_members() == ["alicia", "bob", "carol"]
    assert texts(state.views["#lobby"])[-1].endswith("--- alice is now known as alicia")
    state.apply(Welcome(nick="al", text="Welcome, al!"))
    assert state.nick == "al"


# --- completion sources ------------------------------------------------------------------------


def test_nicks_put_the_room_on_screen_first_and_leave_yourself_out() -> None:
    state = two_rooms()
    assert state.nicks() == ["bob", "carol", "dave"]
    state.switch("#dev")
    assert state.nicks() == ["dave", "bob", "carol"]
    state.apply(Join(room="#dev", nick="BOB"))  # the same person, by nick_key
    assert state.nicks() == ["dave", "BOB", "carol"]


def test_rooms_are_the_joined_ones_then_the_known_ones() -> None:
    state = two_rooms()
    assert state.rooms() == ["#lobby", "#dev"]
    state.apply(
        RoomList(rooms=(RoomInfo("#Dev", 2, ""), RoomInfo("#ops", 1, ""), RoomInfo("#qa", 3, "")))
    )
    assert state.rooms() == ["#lobby", "#dev", "#ops", "#qa"]
    assert texts(state.view)[-1].endswith("#qa (3)")


# --- delivery confirmation and the link ------------------------------------------------------


def test_own_lines_are_pending_until_echoed_or_refused() -> None:
    state = two_rooms()
    state.sent("say", "#lobby", "hello")
    state.sent("msg", "bob", "psst")
    state.sent("say", "#lobby", "too fast")
    state.apply(Message(room="#lobby", nick="alice", text="hello"))
    state.apply(Private(nick="alice", target="Bob", text="psst", echo=True))
    assert state.pending == [("say", "#lobby", "too fast")]
    state.apply(Error(code="flood", text="Slow down."))
    assert state.pending == []


def test_a_refusal_settles_the_line_of_the_command_it_names() -> None:
    """The error names the command it refused: no guessing which pending line it was."""
    state = two_rooms()
    state.sent("say", "#lobby", "first")
    state.sent("msg", "nobody", "psst")
    state.sent("say", "#lobby", "second")
    state.apply(Error(code="no_such_nick", text="Nobody called 'nobody'.", command="msg"))
    assert state.pending == [("say", "#lobby", "first"), ("say", "#lobby", "second")]
    state.apply(Error(code="not_in_room", text="Not in #x.", command="join"))  # not a line
    assert len(state.pending) == 2
    state.apply(Error(code="not_in_room", text="Not there.", command="say"))
    assert state.pending == [("say", "#lobby", "second")]


def test_the_link_starts_connected() -> None:
    link = Link("localhost:9000")
    assert (link.status, link.attempt, link.why) == ("connected", 0, "")


def test_a_rejoin_forgets_the_topic_and_members_it_no_longer_knows() -> None:
    """Issue 12: after a reconnection the topic bar kept a topic cleared meanwhile."""
    state = two_rooms()
    state.apply(Topic(room="#dev", nick="dave", text="old topic"))
    state.apply(Topic(room="#lobby", nick="bob", text="lobby topic"))
    # Reconnected: the server rejoins us; #dev's topic was cleared, #lobby's changed.
    state.apply(Join(room="#dev", nick="alice"))
    state.apply(Who(room="#dev", members=("alice",)))
    state.apply(Join(room="#lobby", nick="alice"))
    state.apply(Topic(room="#lobby", text="new topic"))
    state.apply(Who(room="#lobby", members=("alice", "bob")))
    assert state.views["#dev"].topic == ""
    assert state.views["#dev"].sorted_members() == ["alice"]
    assert state.views["#lobby"].topic == "new topic"
    assert state.views["#lobby"].sorted_members() == ["alice", "bob"]


def test_history_replayed_on_join_comes_first_under_a_divider() -> None:
    """Issue 12: replayed history came after the join and member lines, times ran backwards.
    The server sends join, topic, who, then the history."""
    state = two_rooms()
    state.switch_to.add("#ops")
    for event in (
        Join(room="#ops", nick="alice"),
        Topic(room="#ops", text="deploys"),
        Who(room="#ops", members=("alice", "erin")),
        Message(room="#ops", nick="erin", text="old one", history=True),
        Message(room="#ops", nick="erin", text="old two", history=True),
        Message(room="#ops", nick="erin", text="live"),
    ):
        state.apply(event)
    lines = state.views["#ops"].lines
    shown = [text.split(" ", 1)[-1] for text in texts(state.views["#ops"])]
    assert shown == [
        "Earlier in #ops:",
        "<erin> old one",
        "<erin> old two",
        "--> alice joined #ops",
        "--- Topic of #ops: deploys",
        "--- 2 in #ops: alice, erin",
        "<erin> live",
    ]
    assert all("class:history" in " ".join(style for style, _ in line) for line in lines[:3])
    assert not any("class:history" in style for style, _ in lines[-1])
    state.apply(Message(room="#ops", nick="erin", text="late replay", history=True))
    assert texts(state.views["#ops"])[-1].endswith("<erin> late replay")  # no reordering now


def test_your_own_rename_shows_when_you_are_in_no_room() -> None:
    state = ChatState("alice")
    state.apply(Welcome(nick="alice", text="Welcome, alice!"))
    state.apply(Nick(nick="alice", new_nick="alicia"))
    assert state.nick == "alicia"
    assert texts(state.nowhere)[-1].endswith("--- alice is now known as alicia")
    rooms = two_rooms()
    rooms.apply(Nick(nick="alice", new_nick="alicia"))  # in rooms: shown there, once
    assert sum("now known as" in line for line in texts(rooms.views["#lobby"])) == 1


# --- mentions ---------------------------------------------------------------------------------


def test_a_mention_is_a_whole_word_in_any_case_or_a_highlight_word() -> None:
    state = ChatState("alice", highlights=["deploy", " "])
    assert state.mentions("hi Alice!")
    assert state.mentions("ALICE: are you there")
    assert state.mentions("the deploy is done")
    assert not state.mentions("malice aforethought")
    assert not state.mentions("alice_b and xalice")
    assert not state.mentions("deployment")
    assert not state.mentions("nothing here")


def test_mentions_are_highlighted_ring_once_and_mark_their_pane() -> None:
    rings: list[str] = []
    state = two_rooms()
    state.bell = lambda: rings.append("ding")
    dev, lobby = state.views["#dev"], state.views["#lobby"]
    state.apply(Message(room="#dev", nick="dave", text="plain"))
    assert (dev.unread, dev.mentions, rings) == (1, 0, [])
    state.apply(Message(room="#dev", nick="dave", text="alice, look"))
    assert (dev.unread, dev.mentions, rings) == (2, 1, ["ding"])
    assert any("class:mention" in style for style, _ in dev.lines[-1][1:])
    assert not any("class:mention" in style for line in dev.lines[:-1] for style, _ in line)
    state.apply(Message(room="#dev", nick="dave", text="alice again", history=True))
    assert (dev.mentions, len(rings)) == (1, 1)  # replayed history never rings
    state.apply(Message(room="#lobby", nick="bob", text="hey alice"))  # on screen: no mark
    assert (lobby.unread, lobby.mentions, len(rings)) == (0, 0, 2)
    state.switch("#dev")
    assert (dev.unread, dev.mentions) == (0, 0)


def test_your_own_lines_never_mention_you() -> None:
    rings: list[str] = []
    state = two_rooms()
    state.bell = lambda: rings.append("ding")
    state.apply(Message(room="#dev", nick="ALICE", text="alice here"))
    state.apply(Private(nick="alice", target="bob", text="alice says hi", echo=True))
    assert rings == []
    assert state.views["#dev"].mentions == 0


def test_a_private_message_is_a_mention() -> None:
    rings: list[str] = []
    state = two_rooms()
    state.bell = lambda: rings.append("ding")
    state.apply(Private(nick="bob", target="alice", text="psst"))
    assert rings == ["ding"]
    bob = state.views["bob"]
    assert any("class:mention" in style for style, _ in bob.lines[-1][1:])
    assert (bob.unread, bob.mentions) == (1, 1)


# --- private conversations -------------------------------------------------------------------


def test_a_private_message_either_way_opens_a_query_pane_behind() -> None:
    state = two_rooms()
    state.apply(Private(nick="Bob", target="alice", text="psst"))
    assert list(state.views) == ["#lobby", "#dev", "bob"]
    bob = state.views["bob"]
    assert (bob.name, bob.query, state.active, state.last_private) == ("Bob", True, "#lobby", "Bob")
    state.apply(Private(nick="alice", target="carol", text="hi", echo=True))
    carol = state.views["carol"]
    assert carol.query
    assert carol.unread == 0  # your own line is not unread
    assert texts(carol)[-1].endswith("[msg -> carol] <alice> hi")
    assert texts(state.view)[-1].endswith("[msg -> carol] <alice> hi")  # seen where typed
    assert state.rooms() == ["#lobby", "#dev"]  # queries are no rooms to complete
    assert state.room_names() == ["#lobby", "#dev"]


def test_a_query_pane_has_no_room_and_knows_its_nick() -> None:
    state = two_rooms()
    view = state.open_query("bob", switch=True)
    assert state.view is view
    assert (state.room, state.query) == (None, "bob")
    assert state.open_query("BOB") is view
    state.switch("#lobby")
    assert (state.room, state.query) == ("#lobby", None)


def test_close_closes_only_query_panes() -> None:
    state = two_rooms()
    assert state.close() == "/close only closes private conversations; use /part to leave #lobby."
    assert "#lobby" in state.views
    state.open_query("bob", switch=True)
    assert state.close() is None
    assert "bob" not in state.views
    assert state.active == "#dev"
    assert ChatState("x").close() is not None


def test_a_query_follows_a_rename_and_shows_a_quit() -> None:
    state = two_rooms()
    state.apply(Private(nick="bob", target="alice", text="psst"))
    state.switch("bob")
    state.apply(Nick(nick="bob", new_nick="robert"))
    assert list(state.views) == ["#lobby", "#dev", "robert"]
    assert (state.active, state.query, state.last_private) == ("robert", "robert", "robert")
    state.apply(Quit(nick="robert", text="bye"))
    assert texts(state.view)[-1].endswith("<-- robert quit (bye)")


def test_a_paste_is_one_line_each_and_a_long_one_waits_for_an_answer() -> None:
    state = two_rooms()
    assert state.paste("one\r\ntwo\n\n  \nthree\n") == ["one", "two", "three"]
    six = "\n".join(f"row {i}" for i in range(6))
    assert state.paste(six) == []
    assert state.paste_question() == "send 6 lines to #lobby? y/n"
    assert texts(state.view)[-1].endswith("send 6 lines to #lobby? y/n")
    state.switch("#dev")
    assert state.paste_to is state.views["#lobby"]  # where it was pasted
    assert state.answer_paste(yes=True) == [f"row {i}" for i in range(6)]
    assert state.paste_waiting is None
    assert state.paste(six) == []
    assert state.paste(six + "\nrow 6") == []  # a second paste replaces the first, loudly
    assert texts(state.view)[-2].endswith("--- Pasted 6 lines: not sent.")
    assert state.answer_paste(yes=False) == []
    assert texts(state.view)[-1].endswith("--- Pasted 7 lines: not sent.")
    assert state.answer_paste(yes=False) == []  # nothing waiting: nothing said
    assert texts(state.view)[-1].endswith("--- Pasted 7 lines: not sent.")


def test_operators_are_marked_and_moderation_reads_as_sentences() -> None:
    state = two_rooms()
    state.apply(
        Who(room="#dev", members=("alice", "bob", "dave"), operators=("dave",), voiced=("bob",))
    )
    state.apply(Mode(room="#dev", nick="dave", change="+m"))
    state.apply(Mode(room="#dev", nick="dave", change="+q", target="nick:bob"))
    state.apply(Away(nick="bob", text="lunch"))
    dev = texts(state.views["#dev"])
    assert dev[-3].endswith("--- 3 in #dev: alice, +bob, @dave")
    assert dev[-2].endswith("--- dave moderated #dev: only operators and voiced members speak")
    assert dev[-1].endswith("--- dave muted nick:bob in #dev")
    assert texts(state.view)[-1].endswith("--- bob is away: lunch")


def test_a_kick_of_someone_else_leaves_the_pane_and_of_oneself_closes_it() -> None:
    state = two_rooms()
    state.apply(Kick(room="#dev", nick="dave", target="carol", text="spam"))
    assert texts(state.views["#dev"])[-1].endswith("<-- dave removed carol from #dev (spam)")
    state.apply(Kick(room="#dev", nick="dave", target="Alice", text="bye"))
    assert "#dev" not in state.views
    assert texts(state.view)[-1].endswith("<-- dave removed Alice from #dev (bye)")


def test_lastlog_shows_again_the_lines_of_the_pane_that_match() -> None:
    state = two_rooms()
    state.apply(Message(room="#lobby", nick="bob", text="the Deploy is done"))
    state.apply(Message(room="#lobby", nick="carol", text="lunch?"))
    state.apply(Message(room="#dev", nick="dave", text="deploy in dev"))  # another pane
    assert state.lastlog("deploy") == 1
    lobby = texts(state.views["#lobby"])
    assert lobby[-2].endswith("--- lastlog deploy: 1 line(s)")
    assert lobby[-1].endswith("<bob> the Deploy is done")
    assert state.lastlog("nothing like it") == 0


def test_a_marker_line_shows_where_the_unread_lines_of_a_pane_begin() -> None:
    state = two_rooms()  # #lobby on screen
    state.apply(Message(room="#dev", nick="dave", text="first unseen"))
    state.apply(Message(room="#dev", nick="dave", text="second unseen"))
    dev = texts(state.views["#dev"])
    assert dev[-3:-2] == [UNREAD_MARKER]
    assert dev[-2].endswith("first unseen")
    state.switch("#dev")
    state.apply(Message(room="#dev", nick="dave", text="seen live"))
    assert texts(state.views["#dev"]).count(UNREAD_MARKER) == 1  # on screen: no new marker
    state.switch("#lobby")
    state.apply(Message(room="#dev", nick="dave", text="later unseen"))
    dev = texts(state.views["#dev"])
    assert dev.count(UNREAD_MARKER) == 1  # the one marker moved down
    assert dev[-2:] == [UNREAD_MARKER, dev[-1]]
    assert dev[-1].endswith("later unseen")


def test_urls_lists_the_links_of_the_pane_once_each_latest_last() -> None:
    state = two_rooms()
    long = "https://example.com/" + "a" * 150 + "?q=1"
    state.apply(Message(room="#lobby", nick="bob", text=f"see {long}."))
    state.apply(Message(room="#lobby", nick="carol", text="and www.example.org, or"))
    state.apply(Message(room="#lobby", nick="bob", text=f"again {long}"))
    state.apply(Message(room="#dev", nick="dave", text="https://elsewhere.example"))
    assert state.urls() == ["www.example.org", long]
    lobby = texts(state.views["#lobby"])
    assert lobby[-3].endswith("--- 2 link(s) in this pane:")
    assert lobby[-2:] == ["www.example.org", long]  # no time: one piece to copy
    assert state.urls() == ["www.example.org", long]  # its own rows are not listed again
