"""Static checks of a loaded flow: what must hold before a single user sees it.

Every rule of the engine's promise that can be decided from the file alone is
decided here (back routes, reachability, texts in every locale, callback data
size), so that `trt flows check` in CI rejects a broken file before deploy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from engine import callback_data, telegram_html
from engine.graph import FlowGraph, back_target
from engine.loader import FlowError, LoadedFlow, Loc, Problem, load_flow
from engine.registry import Registry
from engine.spec import FlowSpec, LocalizedText, State
from engine.suggest import did_you_mean
from engine.text_limits import BadPlaceholder, fields, longest, sample, value_limits


@dataclass(slots=True)
class Report:
    problems: list[Problem] = field(default_factory=list)
    # Declared in the file, not yet implemented in Python: shown "coming soon".
    unimplemented_actions: list[str] = field(default_factory=list)
    # Declared providers with no Python yet: their placeholders show a dash.
    unimplemented_providers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def load_checked(path: Path, registry: Registry | None = None) -> LoadedFlow:
    """The flow at `path` only if it passes the check: a bot never starts (nor reloads)
    on a file with a screen that would not show. Raises FlowError with every problem."""
    flow = load_flow(path)
    report = check_flow(flow, registry)
    if not report.ok:
        raise FlowError(report.problems)
    return flow


def check_flow(flow: LoadedFlow, registry: Registry | None = None) -> Report:
    checker = _Checker(flow, registry)
    checker.run()
    problems = sorted(set(checker.problems), key=lambda p: (p.line, p.col, p.message))
    return Report(problems, checker.unimplemented, checker.unimplemented_providers)


class _Checker:
    def __init__(self, flow: LoadedFlow, registry: Registry | None) -> None:
        self.flow = flow
        self.spec: FlowSpec = flow.spec
        self.limits = value_limits(flow.spec)
        self.registry = registry
        self.problems: list[Problem] = []
        self.unimplemented: list[str] = []
        self.unimplemented_providers: list[str] = []

    def at(self, loc: Loc, message: str, *, key: bool = False) -> None:
        self.problems.append(self.flow.positions.at(loc, message, key=key))

    def run(self) -> None:
        spec = self.spec
        if spec.fallback_locale not in spec.locales:
            self.at(("fallback_locale",), f"fallback locale {spec.fallback_locale!r} is not listed")
        if spec.root not in spec.states:
            self.at(("root",), f"root state {spec.root!r} is not defined")
            return
        self.check_texts()
        self.check_commands()
        self.check_states()
        self.check_declarations()
        self.check_product_texts()
        self.check_graph()

    def text(self, loc: Loc, text: LocalizedText, *, markup: bool = True) -> None:
        """Present in every locale, and (`markup`: sent as HTML) parsed by Telegram."""
        for locale in self.spec.locales:
            if not text.get(locale, "").strip():
                self.at(loc, f"missing {locale!r} text")
        for locale, value in text.items():
            if locale not in self.spec.locales:
                self.at((*loc, locale), f"unknown locale {locale!r}", key=True)
            elif markup:
                self.markup((*loc, locale), value)

    def markup(self, loc: Loc, value: str) -> None:
        try:
            filled = sample(value)
        except BadPlaceholder as exc:
            self.at(loc, str(exc))
            return
        for problem in telegram_html.problems(filled):
            self.at(loc, f"Telegram would refuse this text: {problem}")

    def check_texts(self) -> None:
        for name, value in self.spec.system:
            self.text(("system", name), value)
        for name, value in self.spec.texts.items():
            self.text(("texts", name), value)

    def check_product_texts(self) -> None:
        """Each text the product shows exists, and fits where it is shown."""
        if self.registry is None:
            return
        limits = {
            "message": telegram_html.MESSAGE_LIMIT,
            "notice": telegram_html.ANSWER_LIMIT,
            "caption": telegram_html.CAPTION_LIMIT,
        }
        for key, use in sorted(self.registry.texts.items()):
            text = self.spec.texts.get(key)
            if text is None:
                hint = did_you_mean(key, self.spec.texts)
                self.at(("texts",), f"the product shows text {key!r}, missing here{hint}", key=True)
                continue
            for locale, value in text.items():
                loc: Loc = ("texts", key, locale)
                if use.kind == "notice" and ("<" in value or "&" in value):
                    self.at(loc, "a notice on a button is plain text: Telegram shows tags as typed")
                try:
                    _, found = fields(value)
                    bound = longest(value, {f.name: None for f in found} | dict(use.values))
                except BadPlaceholder:
                    continue
                if bound.unbounded:
                    names = ", ".join(f"{{{n}}}" for n in bound.unbounded)
                    self.at(loc, f"{names}: the product does not fill it in this text")
                elif bound.units > limits[use.kind]:
                    self.at(
                        loc,
                        f"this {use.kind} can reach {bound.units} characters; Telegram shows "
                        f"at most {limits[use.kind]} there",
                    )

    def check_commands(self) -> None:
        for command, state in self.spec.commands.items():
            if command == "start":
                self.at(("commands", "start"), "/start always opens the root state", key=True)
            elif state not in self.spec.states:
                hint = self.state_hint(state)
                self.at(("commands", command), f"unknown state {state!r}{hint}")

    def check_states(self) -> None:
        spec = self.spec
        for name, st in spec.states.items():
            loc: Loc = ("states", name)
            self.text((*loc, "text"), st.text)
            if name == spec.root:
                if st.back or st.parent:
                    self.at(loc, "the root state cannot have a back route")
            elif not (st.back or st.parent):
                self.at(loc, f"state {name!r} has no back route (set 'parent' or 'back')", key=True)
            for key in ("parent", "back"):
                target = getattr(st, key)
                if target is not None and target not in spec.states:
                    self.at((*loc, key), f"unknown state {target!r}{self.state_hint(target)}")
            known = self.placeholder_names(name)
            for locale, value in st.text.items():
                try:
                    _, found = fields(value)
                except BadPlaceholder:
                    continue  # said by self.text
                for ph in dict.fromkeys(f.name for f in found):
                    if ph not in known:
                        hint = did_you_mean(ph, known)
                        self.at((*loc, "text", locale), f"unknown placeholder {{{ph}}}{hint}")
                self.fits((*loc, "text", locale), st, value, locale)
            ids: set[str] = set()
            for r, row in enumerate(st.buttons):
                for c, button in enumerate(row):
                    bloc: Loc = (*loc, "buttons", r, c)
                    if button.id in ids:
                        self.at((*bloc, "id"), f"duplicate button id {button.id!r} in {name!r}")
                    ids.add(button.id)
                    self.text((*bloc, "text"), button.text, markup=False)
                    if not button.to and not button.action:
                        self.at(bloc, f"button {button.id!r} has neither 'to' nor 'action'")
                    if button.outcomes and not button.action:
                        self.at((*bloc, "outcomes"), "'outcomes' needs an 'action'")
                    for key, target in [("to", button.to)] + [
                        ("outcomes", o) for o in button.outcomes
                    ]:
                        if target is not None and target not in spec.states:
                            self.at(
                                (*bloc, key), f"unknown state {target!r}{self.state_hint(target)}"
                            )
                    if button.action is not None:
                        self.action_ref((*bloc, "action"), button.action)
            if st.options is not None:
                oloc: Loc = (*loc, "options")
                self.provider_ref((*oloc, "provider"), st.options.provider, kind="options")
                if st.options.to not in spec.states:
                    self.at(
                        (*oloc, "to"),
                        f"unknown state {st.options.to!r}{self.state_hint(st.options.to)}",
                    )
                if st.options.action is not None:
                    self.action_ref((*oloc, "action"), st.options.action)
                if st.options.empty_text is not None:
                    self.text((*oloc, "empty_text"), st.options.empty_text)
                size = callback_data.longest(len(self.flow.version), 1, st.options.max_value_length)
                if size > callback_data.MAX_BYTES:
                    self.at(
                        (*oloc, "max_value_length"),
                        f"callback data can reach {size} bytes (Telegram allows "
                        f"{callback_data.MAX_BYTES}); lower max_value_length",
                    )
            if st.input is not None:
                iloc: Loc = (*loc, "input")
                self.text((*iloc, "error"), st.input.error)
                for key, target in [("next", st.input.next)] + [
                    ("outcomes", o) for o in st.input.outcomes
                ]:
                    if target not in spec.states:
                        self.at((*iloc, key), f"unknown state {target!r}{self.state_hint(target)}")
                if st.input.outcomes and not st.input.action:
                    self.at((*iloc, "outcomes"), "'outcomes' needs an 'action'")
                if st.input.action is not None:
                    self.action_ref((*iloc, "action"), st.input.action)
                if "text" in st.input.accept and st.input.example is None:
                    self.at(iloc, "a text input needs an 'example' for the path tests")
                if st.input.min_length > st.input.max_length:
                    self.at((*iloc, "min_length"), "min_length is greater than max_length")
            for p, provider in enumerate(st.data):
                self.provider_ref((*loc, "data", p), provider, kind="data")

    def fits(self, loc: Loc, st: State, value: str, locale: str) -> None:
        """The screen, every value at its longest, within Telegram's 4096: with the
        longest notice the engine may put above it, and the empty-list text below."""
        try:
            bound = longest(value, self.limits)
        except BadPlaceholder:
            return
        if bound.unbounded:
            names = ", ".join(f"{{{n}}}" for n in bound.unbounded)
            self.at(
                loc,
                f"{names} has no declared length, so this screen's length cannot be proven: "
                "declare it where it comes from (provides: {name: N}) or write {name:.N}",
            )
            return
        extra = self.longest_notice(st, locale)
        if st.options is not None and st.options.empty_text is not None:
            extra += 2 + telegram_html.visible_length(st.options.empty_text.get(locale, ""))
        if bound.units + extra > telegram_html.MESSAGE_LIMIT:
            self.at(
                loc,
                f"this screen can reach {bound.units + extra} characters with every value at "
                f"its longest; Telegram shows at most {telegram_html.MESSAGE_LIMIT}: shorten "
                "it, or show less of a value ({name:.N})",
            )

    def longest_notice(self, st: State, locale: str) -> int:
        """A notice the engine sends above a screen (an input's error, 'out of date',
        'unexpected input') and the blank line after it."""
        notices = [self.spec.system.stale, self.spec.system.unexpected_input]
        if st.input is not None:
            notices.append(st.input.error)
        return 2 + max(telegram_html.visible_length(n.get(locale, "")) for n in notices)

    def state_hint(self, name: str) -> str:
        return did_you_mean(name, self.spec.states)

    def placeholder_names(self, state: str) -> set[str]:
        """Names a state's text may use: its data providers' keys and every stored value."""
        spec = self.spec
        names = set(self.stored)
        names.update(spec.states[state].pushed or ())
        for provider in spec.states[state].data:
            declared = spec.providers.get(provider)
            if declared is not None:
                names.update(declared.provides)
        return names

    @functools.cached_property
    def stored(self) -> frozenset[str]:
        """Names any state stores into the conversation (inputs, options, buttons' `set`)."""
        names: set[str] = set()
        for st in self.spec.states.values():
            names.update(key for row in st.buttons for button in row for key in button.set)
            if st.input is not None:
                names.add(st.input.store)
            if st.options is not None:
                names.add(st.options.store)
        return frozenset(names)

    def action_ref(self, loc: Loc, name: str) -> None:
        if name not in self.spec.actions:
            hint = did_you_mean(name, self.spec.actions) or " (declare it under 'actions')"
            self.at(loc, f"unknown action {name!r}{hint}")

    def provider_ref(self, loc: Loc, name: str, *, kind: str) -> None:
        if name not in self.spec.providers:
            hint = did_you_mean(name, self.spec.providers) or " (declare it under 'providers')"
            self.at(loc, f"unknown provider {name!r}{hint}")
            return
        if self.registry is None:
            return
        registered, other = (
            (self.registry.options_providers, self.registry.data_providers)
            if kind == "options"
            else (self.registry.data_providers, self.registry.options_providers)
        )
        if name in other:
            self.at(loc, f"provider {name!r} is implemented, but not as a {kind} provider")
        elif name not in registered and name not in self.unimplemented_providers:
            self.unimplemented_providers.append(name)

    def check_declarations(self) -> None:
        used_actions = {
            b.action for st in self.spec.states.values() for row in st.buttons for b in row
        } | {st.options.action for st in self.spec.states.values() if st.options}
        used_actions |= {st.input.action for st in self.spec.states.values() if st.input}
        used_providers = {p for st in self.spec.states.values() for p in st.data} | {
            st.options.provider for st in self.spec.states.values() if st.options
        }
        for name in self.spec.actions:
            if name not in used_actions:
                self.at(("actions", name), f"action {name!r} is declared but never used", key=True)
            elif self.registry is not None and name not in self.registry.actions:
                self.unimplemented.append(name)
        for name in self.spec.providers:
            if name not in used_providers:
                self.at(
                    ("providers", name), f"provider {name!r} is declared but never used", key=True
                )

    def check_graph(self) -> None:
        spec = self.spec
        graph = FlowGraph(spec)
        reachable: set[str] = set()
        for entry in graph.entries:
            if entry in spec.states:
                reachable |= graph.reachable_from(entry)
        for name in spec.states:
            if name not in reachable:
                self.at(
                    ("states", name),
                    f"no button or action leads to state {name!r} (from {spec.root!r}, "
                    "nor from a pushed state)",
                    key=True,
                )
        for name in spec.states:
            chain = [name]
            current: str | None = name
            while current is not None and current != spec.root:
                current = back_target(spec, current) if current in spec.states else None
                if current is None or current not in spec.states:
                    break
                if current in chain:
                    self.at(
                        ("states", name),
                        "back chain loops: " + " -> ".join([*chain, current]),
                        key=True,
                    )
                    break
                chain.append(current)
        if not graph.triggers(spec.root):
            self.at(("states", spec.root), "the root state has no way out", key=True)
