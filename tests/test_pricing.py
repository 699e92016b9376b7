"""Pricing: the real catalog, the calculator and its fallback, the schema, `trt pricing check`,
reloading on change, and a Hypothesis property over random price tables."""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import re
from decimal import ROUND_CEILING, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from engine.loader import load_flow
from engine.registry import Context
from flows.registry import build_registry
from pricing.calculator import NoPrice
from pricing.catalog import DEFAULT_PATH, Catalog, CatalogError, Model, load_catalog, parse_catalog
from pricing.money import format_rub, rub, to_kopecks
from pricing.schema import schema
from pricing.source import CatalogSource
from trt.cli import main
from trt.pricing_menus import menu_kinds
from trt.settings import Settings

CATALOG = load_catalog()
RAW = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
RUB_PER_USD_WITH_MARKUP = Decimal("157.14")
ALL_KINDS = {"text_to_image", "image_to_image", "edit", "text_to_video", "image_to_video", "audio"}


# ---------------------------------------------------------------- builders


def t(text: str) -> dict[str, str]:
    return {"ru": text, "en": text}


def param(
    name: str, choices: list[str], default: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "kie_field": name,
        "type": "string",
        "title": t(name),
        "choices": choices,
        "default": default or choices[0],
        **extra,
    }


def variant(rub: str, **params: str) -> dict[str, Any]:
    return {"params": params, "rub": rub}


def model(
    id_: str = "m1",
    *,
    kinds: list[str] | None = None,
    free: bool = False,
    params: list[dict[str, Any]] | None = None,
    by: list[str] | None = None,
    variants: list[dict[str, Any]] | None = None,
    **pricing: Any,
) -> dict[str, Any]:
    return {
        "id": id_,
        "kie_model": f"test/{id_}",
        "family": "market",
        "kinds": kinds or ["text_to_image"],
        "free": free,
        "title": t(f"Model {id_}"),
        "description": t("A test model."),
        "input": {"prompt": {"field": "prompt", "min_length": 1, "max_length": 2000}},
        "params": params or [],
        "pricing": {
            "unit": "per_item",
            "by": by or [],
            "variants": [variant("10.00")] if variants is None else variants,
            **pricing,
        },
    }


def document(*models: dict[str, Any]) -> dict[str, Any]:
    return {"version": 2, "currency": "RUB", "models": list(models)}


def catalog_of(*models: dict[str, Any]) -> Catalog:
    catalog, problems = parse_catalog(document(*models))
    assert catalog is not None and not problems, problems
    return catalog


def problems_of(raw: Any) -> list[str]:
    _, problems = parse_catalog(raw)
    assert problems, "expected problems"
    return problems


def video_model(**pricing: Any) -> dict[str, Any]:
    """Duration 5/10/15 x resolution 720p/1080p, with only some combinations priced."""
    return model(
        "video",
        kinds=["text_to_video"],
        params=[param("duration", ["5", "10", "15"]), param("resolution", ["720p", "1080p"])],
        by=["duration", "resolution"],
        **{
            "variants": [
                variant("50.00", duration="10", resolution="720p"),
                variant("80.00", duration="15", resolution="720p"),
                variant("90.00", duration="5", resolution="1080p"),
            ],
            **pricing,
        },
    )


def write(path: Path, raw: Any) -> Path:
    path.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the real catalog


def test_the_catalog_covers_every_kind_with_market_models() -> None:
    models = list(CATALOG.models.values())
    assert len(models) >= 20
    assert {m.family for m in models} == {"market"}
    assert {k for m in models for k in m.kinds} == ALL_KINDS
    assert len([m for m in models if m.free]) >= 2
    assert all(re.fullmatch(r"[a-z0-9-]{1,24}", m.id) for m in models)
    assert CATALOG.hidden == []


def all_combinations(m: Model) -> list[dict[str, str]]:
    return list(m.combinations([p.name for p in m.params]))


@pytest.mark.parametrize("model_id", sorted(CATALOG.models))
def test_every_combination_of_every_model_has_a_price(model_id: str) -> None:
    m = CATALOG.models[model_id]
    for combination in all_combinations(m):
        quote = m.quote(combination)
        assert quote.kopecks > 0  # what it costs, even when the user gets it free
        assert m.price_kopecks(combination) == (0 if m.free else quote.kopecks)
    assert m.min_price_kopecks() == (
        0 if m.free else min(m.quote(c).kopecks for c in m.combinations())
    )


def test_prices_follow_the_price_list_and_kie_credits() -> None:
    """rub = KIE's USD price x 157.14 (78.57 RUB/USD, markup 2), to the kopeck of the price list."""
    checked = 0
    for item in RAW["models"]:
        for v in item["pricing"]["variants"]:
            if "usd" in v:
                expected = Decimal(v["usd"]) * RUB_PER_USD_WITH_MARKUP
                assert abs(Decimal(v["rub"]) - expected) <= Decimal("0.005"), (item["id"], v)
                checked += 1
    assert checked >= 60


@pytest.mark.parametrize(
    ("model_id", "params", "kopecks"),
    [
        ("flux2-flex-t2i", {"resolution": "1K"}, 1100),
        ("flux2-flex-t2i", {"resolution": "2K", "aspect_ratio": "16:9"}, 1886),
        ("wan26-t2v", {"duration": "10", "resolution": "1080p"}, 16460),
        ("kling26-t2v", {"duration": "10", "sound": "true"}, 17285),
        (
            "seedance15-t2v",
            {"duration": "12", "resolution": "480p", "generate_audio": "true"},
            2986,
        ),
        ("sfx-v2", {"duration_seconds": "10"}, 190),  # 0.19 per second x 10 s
        ("z-image", {}, 0),  # free
    ],
)
def test_exact_prices_of_the_catalog(model_id: str, params: dict[str, str], kopecks: int) -> None:
    m = CATALOG.models[model_id]
    assert m.price_kopecks(params) == kopecks
    if not m.free:
        assert m.quote(params).exact


def test_the_catalogs_one_fallback_charges_the_nearer_dearer_variant() -> None:
    hailuo = CATALOG.models["hailuo02-i2v"]
    quote = hailuo.quote({"duration": "6", "resolution": "768P"})
    assert not quote.exact
    assert quote.variant.values == {"duration": "10", "resolution": "768P"}
    # The variant's own price, whatever the file says it is today.
    assert quote.kopecks == hailuo.price_kopecks({"duration": "10", "resolution": "768P"})


def test_menu_kinds_map_to_catalog_kinds() -> None:
    assert {m.id for m in CATALOG.by_kind("image_edit")} == {m.id for m in CATALOG.by_kind("edit")}
    assert CATALOG.by_kind("image_edit")
    assert {m.id for m in CATALOG.by_kind("free")} == {
        m.id for m in CATALOG.models.values() if m.free
    }
    assert CATALOG.models["flux2-flex-i2i"].kind_for("image_edit") == "edit"
    assert CATALOG.models["z-image"].kind_for("free") == "text_to_image"


def test_kie_input_uses_kie_field_names_and_types() -> None:
    kling = CATALOG.models["kling26-i2v"]
    out = kling.kie_input({"sound": "true", "duration": "10"}, "a cat", ["https://x/1.png"])
    assert out == {
        "prompt": "a cat",
        "duration": "10",
        "sound": True,
        "image_urls": ["https://x/1.png"],
    }
    wan25 = CATALOG.models["wan25-i2v"]
    assert wan25.kie_input({}, "p", ["https://x/1.png"])["image_url"] == "https://x/1.png"
    tts = CATALOG.models["tts-turbo"]
    assert tts.kie_input({}, "Hello")["text"] == "Hello"
    assert tts.prompt.accepts("x" * 2000) and not tts.prompt.accepts("x" * 2001)
    assert CATALOG.models["sfx-v2"].kie_input({}, "rain")["duration_seconds"] == 5.0
    assert CATALOG.models["nano-banana"].kie_input({}, "p")["output_format"] == "png"


# ---------------------------------------------------------------- the calculator


def test_exact_match_comes_first() -> None:
    m = catalog_of(video_model()).models["video"]
    quote = m.quote({"duration": "10", "resolution": "720p"})
    assert quote.exact and quote.kopecks == 5000


def test_exact_match_beats_a_pricier_variant_at_distance_zero() -> None:
    m = catalog_of(video_model(weights={"duration": 0})).models["video"]
    # 15 s differs from 10 s by weight 0, yet the exact 10 s price is used.
    assert m.quote({"duration": "10", "resolution": "720p"}).kopecks == 5000


def test_numeric_parameters_fall_back_to_the_nearest_value() -> None:
    m = catalog_of(video_model(weights={"resolution": 5})).models["video"]
    # 5 s at 720p: 10 s is 5/10 away, 15 s is 10/10 away; 5 s 1080p differs in resolution (5).
    quote = m.quote({"duration": "5", "resolution": "720p"})
    assert not quote.exact
    assert quote.variant.values == {"duration": "10", "resolution": "720p"}
    assert quote.distance == Fraction(1, 2)
    assert quote.kopecks == 5000


def test_weights_decide_which_parameter_may_change() -> None:
    # 15 s at 1080p: 15 s 720p differs in resolution, 5 s 1080p in duration (1 whole span).
    cheap_res = catalog_of(video_model(weights={"resolution": 0.5}))
    assert (
        cheap_res.models["video"].quote({"duration": "15", "resolution": "1080p"}).kopecks == 8000
    )
    cheap_dur = catalog_of(video_model(weights={"duration": 0.25}))
    assert (
        cheap_dur.models["video"].quote({"duration": "15", "resolution": "1080p"}).kopecks == 9000
    )


def test_ties_take_the_higher_price() -> None:
    # 15 s at 1080p with default weights: 15/720p (distance 1) and 5/1080p (distance 1) tie.
    m = catalog_of(video_model()).models["video"]
    quote = m.quote({"duration": "15", "resolution": "1080p"})
    assert quote.distance == 1
    assert quote.kopecks == 9000  # 90.00 over 80.00: never undercharge
    # A categorical tie too: two colours, both one step away.
    styles = model(
        "styles",
        params=[param("style", ["a", "b", "c"])],
        by=["style"],
        variants=[variant("3.00", style="a"), variant("7.00", style="b")],
    )
    assert catalog_of(styles).models["styles"].price_kopecks({"style": "c"}) == 700


def test_strict_parameters_never_fall_back_and_hide_the_model() -> None:
    raw = video_model(strict=["resolution"])
    raw["pricing"]["variants"] = [variant("50.00", duration="10", resolution="720p")]
    catalog = catalog_of(raw)
    m = catalog.models["video"]
    assert m.quote({"duration": "5", "resolution": "720p"}).kopecks == 5000  # duration may move
    with pytest.raises(NoPrice):
        m.quote({"duration": "5", "resolution": "1080p"})
    assert not m.sellable
    assert any("resolution=1080p" in u for u in m.unpriced)
    assert catalog.by_kind("text_to_video") == []
    assert catalog.get("video") is None
    with pytest.raises(NoPrice):
        m.min_price_kopecks()


def test_a_model_without_variants_is_hidden_and_never_sold_at_zero() -> None:
    catalog = catalog_of(model("bare", variants=[]), model("ok"))
    assert [m.id for m in catalog.by_kind("text_to_image")] == ["ok"]
    assert catalog.get("bare") is None
    with pytest.raises(NoPrice):
        catalog.models["bare"].price_kopecks({})
    # A free model needs a cost price too.
    free = catalog_of(model("gift", free=True, variants=[]))
    assert free.by_kind("free") == [] and free.get("gift") is None


def test_per_second_prices_are_multiplied_before_rounding_up() -> None:
    sfx = model(
        "sfx",
        kinds=["audio"],
        params=[param("seconds", ["3", "10"], type="float")],
        variants=[variant("0.101")],
        unit="per_second",
        duration_param="seconds",
    )
    m = catalog_of(sfx).models["sfx"]
    assert m.price_kopecks({"seconds": "10"}) == 101  # 1.01 ₽, not 10 x 11 kopecks
    assert m.price_kopecks({"seconds": "3"}) == 31  # 0.303 ₽ rounds up to 31 kopecks
    assert m.min_price_kopecks() == 31


def test_rounding_is_up_to_a_whole_kopeck() -> None:
    assert to_kopecks(Decimal("0.004")) == 1
    assert to_kopecks(Decimal("18.86")) == 1886
    assert to_kopecks(Decimal("0.188568"), Decimal(10)) == 189
    assert format_rub(1886) == "18.86" and format_rub(1100) == "11" and format_rub(5) == "0.05"
    assert format_rub(1886, "ru") == "18,86" and rub(-5, "ru") == "-0,05 ₽"
    assert rub(500, "en") == "5 ₽" and rub(1571, "en") == "15.71 ₽"


def test_free_models_cost_the_user_nothing_but_keep_a_cost_price() -> None:
    m = catalog_of(model("gift", free=True, variants=[variant("0.63")])).models["gift"]
    assert m.price_kopecks({}) == 0
    assert m.quote({}).kopecks == 63


# ---------------------------------------------------------------- schema and cross-field rules


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda m: m["pricing"]["variants"][0].update(rub="-5.00"),
            r"model m1: .*rub.*non-negative",
        ),
        (lambda m: m["pricing"]["variants"][0].update(rub=5), r"model m1: .*rub.*not of type"),
        (lambda m: m.update(id="Bad_Id"), r"model Bad_Id: id: .*short id"),
        (lambda m: m.update(id="x" * 25), r"model x+: id:"),
        (lambda m: m.update(family="veo"), r"model m1: family: .*market"),
        (lambda m: m.update(kinds=["music"]), r"model m1: kinds\[0\]"),
        (lambda m: m.pop("title"), r"model m1: \(model\): 'title' is a required property"),
        (lambda m: m.update(colour="red"), r"model m1: .*'colour' was unexpected"),
        (lambda m: m["pricing"].update(unit="per_second"), r"'duration_param' is a required"),
        (lambda m: m["input"].pop("prompt"), r"model m1: input: 'prompt' is a required"),
        (
            lambda m: m["params"].append(param("p", [], default="a")),
            r"model m1: params\[0\]\.choices",
        ),
    ],
)
def test_schema_violations_are_rejected(mutate: Any, expected: str) -> None:
    raw = document(model())
    mutate(raw["models"][0])
    problems = problems_of(raw)
    assert any(re.search(expected, p) for p in problems), problems


def test_top_level_schema_violations() -> None:
    assert problems_of({"version": 2, "currency": "USD", "models": []})
    raw = document(model())
    raw["version"] = 1
    assert any(p.startswith("version:") for p in problems_of(raw))


@pytest.mark.parametrize(
    ("raw_model", "expected"),
    [
        (
            model(
                params=[param("q", ["a", "b"])],
                by=["q"],
                variants=[variant("1.00", q="a"), variant("2.00", q="a")],
            ),
            "model m1: pricing: variant 2 duplicates variant 1 (q=a)",
        ),
        (
            model(variants=[variant("0")]),
            "model m1: pricing: variant 1: price 0 for a model that is not free",
        ),
        (
            model(params=[param("q", ["a", "b"], default="c")]),
            "model m1: param q: default 'c' is not among its choices",
        ),
        (
            model(params=[param("q", ["a"])], by=["q"], variants=[variant("1.00", q="z")]),
            "model m1: pricing: variant 1: q='z' is not among the choices",
        ),
        (
            model(params=[param("q", ["a"])], by=["q"], variants=[variant("1.00")]),
            "model m1: pricing: variant 1 names [], expected exactly `by` ['q']",
        ),
        (model(by=["nope"], variants=[]), "model m1: pricing: no parameter 'nope'"),
        (
            model(params=[param("n", ["x"], type="int")]),
            "model m1: param n: choice 'x' is not a valid int",
        ),
        (
            model(params=[param("prompt", ["a"])]),
            "model m1: KIE field 'prompt' is filled twice (prompt, images, params, fixed)",
        ),
    ],
)
def test_cross_field_rules(raw_model: dict[str, Any], expected: str) -> None:
    assert expected in problems_of(document(raw_model))


def test_duplicate_model_ids_are_rejected() -> None:
    assert "model m1: the id is used by another model" in problems_of(document(model(), model()))


def test_load_catalog_raises_with_every_problem(tmp_path: Path) -> None:
    raw = document(model("a", variants=[variant("0")]), model("b", variants=[variant("0")]))
    with pytest.raises(CatalogError) as caught:
        load_catalog(write(tmp_path / "p.json", raw))
    assert len(caught.value.problems) == 2
    (tmp_path / "bad.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(CatalogError, match="cannot read JSON"):
        load_catalog(tmp_path / "bad.json")


# ---------------------------------------------------------------- trt pricing check


def run_check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["pricing", "check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_passes_the_real_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_check(capsys)
    assert code == 0, err
    assert err == ""
    assert "ok, 39 models" in out
    assert "model hailuo02-i2v: duration=6, resolution=768P has no exact price" in out
    assert "uses variant duration=10, resolution=768P (39.29 ₽" in out
    kinds = menu_kinds(load_flow(Settings().flows_path).spec)
    reached = {m.id for k in kinds for m in CATALOG.of_kind(k)}
    assert ("not in any menu" in out) == bool(set(CATALOG.models) - reached)


def test_check_reports_fallbacks_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "prices.json", document(video_model(), model("img")))
    code, out, err = run_check(capsys, str(path))
    assert code == 0, err
    fallbacks = [line for line in out.splitlines() if "no exact price" in line]
    assert len(fallbacks) == 3  # 6 combinations, 3 priced exactly
    assert (
        f"{path}: model video: duration=15, resolution=1080p has no exact price; uses variant"
        " duration=5, resolution=1080p (90 ₽, distance 1)" in out
    )
    assert f"{path}: ok, 2 models, 7 priced combinations in menus (3 by fallback)" in out


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            document(
                model(
                    params=[param("q", ["a", "b"])],
                    by=["q"],
                    variants=[variant("1.00", q="a"), variant("1.00", q="a")],
                )
            ),
            "model m1: pricing: variant 2 duplicates variant 1 (q=a)",
        ),
        (
            document(model(variants=[variant("-1.00")])),
            "model m1: pricing.variants[0].rub: '-1.00'",
        ),
        (
            document(model(variants=[])),
            "model m1: no price for any parameters: no price variants (hidden)",
        ),
        (document(model(kinds=["audio"], variants=[])), "model m1: no price for any parameters"),
    ],
)
def test_check_fails_with_file_model_message_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: dict[str, Any], expected: str
) -> None:
    path = write(tmp_path / "prices.json", raw)
    code, out, err = run_check(capsys, str(path))
    assert code == 1
    assert f"{path}: {expected}" in err, err
    assert "ok," not in out


def test_check_refuses_prices_below_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = document(model(variants=[{"params": {}, "rub": "1.00", "usd": "0.10"}]))
    raw["exchange"] = {"rub_per_usd": "78.57", "markup": "2"}
    code, _, err = run_check(capsys, str(write(tmp_path / "p.json", raw)))
    assert code == 1
    assert "model m1: variant any parameters: 1.00 ₽ is below KIE's cost 7.86 ₽" in err


def test_check_compares_models_with_the_flows_input_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = model("short")
    short["input"]["prompt"]["max_length"] = 500
    picky = model("picky", kinds=["image_to_image"])
    picky["input"]["images"] = {
        "field": "image_urls",
        "list": True,
        "min": 1,
        "max": 1,
        "mime_types": ["image/png"],
        "max_size_mb": 5,
    }
    code, _, err = run_check(capsys, str(write(tmp_path / "p.json", document(short, picky))))
    assert code == 1
    assert "model short: step 'prompt' accepts 3..2000 characters, the model 1..500" in err
    assert (
        "model picky: step 'image' accepts image/jpeg, image/webp, the model only image/png" in err
    )
    assert "model picky: step 'image' accepts up to 10 MB, the model 5 MB" in err


def test_check_of_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2", encoding="utf-8")
    code, _, err = run_check(capsys, str(bad))
    assert code == 1 and err.startswith(f"{bad}: cannot read JSON")
    code, _, err = run_check(capsys, str(tmp_path / "missing.json"))
    assert code == 1 and "cannot read JSON" in err


def test_check_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["pricing", "check", "--help"])
    assert caught.value.code == 0
    assert "nearest-variant fallback" in capsys.readouterr().out


# ---------------------------------------------------------------- reloading


def touch_later(path: Path) -> None:
    """Move the mtime forward, so a change within one clock tick is still seen."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_the_source_caches_and_reloads_on_change(tmp_path: Path) -> None:
    path = write(tmp_path / "p.json", document(model(variants=[variant("10.00")])))
    source = CatalogSource(path)
    first = source.current()
    assert source.current() is first  # unchanged: no second parse
    write(path, document(model(variants=[variant("12.50")])))
    touch_later(path)
    second = source.current()
    assert second is not first
    assert second.models["m1"].price_kopecks({}) == 1250


def test_a_broken_new_file_keeps_the_last_good_catalog(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "p.json", document(model()))
    source = CatalogSource(path)
    good = source.current()
    path.write_text('{"version": 2, "models": [', encoding="utf-8")
    touch_later(path)
    with caplog.at_level(logging.ERROR, logger="pricing.source"):
        assert source.current() is good
        assert source.current() is good
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "keeping the previous catalog" in errors[0].getMessage()
    path.unlink()
    assert source.current() is good
    write(path, document(model(variants=[variant("3.00")])))
    touch_later(path)
    assert source.current().models["m1"].price_kopecks({}) == 300


def test_without_a_good_catalog_the_source_raises(tmp_path: Path) -> None:
    path = write(tmp_path / "p.json", document(model(variants=[variant("-1")])))
    source = CatalogSource(path)
    with pytest.raises(CatalogError):
        source.current()
    with pytest.raises(CatalogError):
        source.current()


async def test_menus_follow_the_file_without_a_restart(tmp_path: Path) -> None:
    raw = document(model("a"), model("b"))
    path = write(tmp_path / "p.json", raw)
    registry = build_registry(CatalogSource(path))
    ctx = Context(
        bot=None,
        user_id=1,
        chat_id=1,
        locale="en",
        state="models",  # type: ignore[arg-type]
        data={"kind": "text_to_image", "model": "a"},
    )
    models = registry.options_providers["models_by_kind"]
    info = registry.data_providers["model_info"]
    assert [o.value for o in await models(ctx)] == ["a", "b"]
    assert (await info(ctx))["price"] == "10 ₽"
    changed = copy.deepcopy(raw)
    changed["models"][0]["pricing"]["variants"] = [variant("12.34")]
    changed["models"][1]["pricing"]["variants"] = []  # b loses its price: hidden
    write(path, changed)
    touch_later(path)
    assert [o.value for o in await models(ctx)] == ["a"]
    assert (await info(ctx))["price"] == "12.34 ₽"


# ---------------------------------------------------------------- property


@st.composite
def price_tables(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, str]]:
    """A random model (1-3 priced parameters, some numeric, weights, a subset of priced
    combinations, per item or per second) and a random combination of its choices."""
    params, weights = [], {}
    for i in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            numbers = draw(st.lists(st.integers(1, 30), min_size=1, max_size=4, unique=True))
            choices = [str(n) for n in numbers]
        else:
            choices = draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4, unique=True))
        params.append(param(f"p{i}", choices))
        weight = draw(st.sampled_from([None, 0, 0.5, 1, 2, 3]))
        if weight is not None:
            weights[f"p{i}"] = weight
    by = [p["name"] for p in params]
    product = list(itertools.product(*(p["choices"] for p in params)))
    keys = draw(st.lists(st.sampled_from(product), min_size=1, max_size=len(product), unique=True))
    variants = []
    for key in keys:
        rub = Decimal(draw(st.integers(1, 10**7))) / 10 ** draw(st.integers(0, 4))
        variants.append(variant(str(rub), **dict(zip(by, key, strict=True))))
    extra: dict[str, Any] = {"weights": weights}
    if draw(st.booleans()):
        params.append(
            param(
                "seconds",
                [
                    str(s)
                    for s in draw(st.lists(st.integers(1, 20), min_size=1, max_size=3, unique=True))
                ],
                type="int",
            )
        )
        extra |= {"unit": "per_second", "duration_param": "seconds"}
    raw = model("prop", params=params, by=by, variants=variants, **extra)
    chosen = {p["name"]: draw(st.sampled_from(p["choices"])) for p in params}
    return raw, chosen


def reference_distance(
    raw: dict[str, Any], chosen: dict[str, str], values: dict[str, str]
) -> Fraction:
    """The documented distance, written independently of pricing.calculator."""
    total = Fraction(0)
    weights = raw["pricing"].get("weights", {})
    for p in raw["params"]:
        name = p["name"]
        if name not in raw["pricing"]["by"] or chosen[name] == values[name]:
            continue
        weight = Fraction(str(weights.get(name, 1)))
        if all(re.fullmatch(r"\d+", c) for c in p["choices"]):
            numbers = [int(c) for c in p["choices"]]
            span = max(numbers) - min(numbers)
            total += weight * Fraction(abs(int(chosen[name]) - int(values[name])), span)
        else:
            total += weight
    return total


def reference_kopecks(raw: dict[str, Any], rub: str, chosen: dict[str, str]) -> int:
    amount = Decimal(rub)
    if raw["pricing"]["unit"] == "per_second":
        amount *= Decimal(chosen["seconds"])
    return int((amount * 100).to_integral_value(rounding=ROUND_CEILING))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(price_tables())
def test_price_is_never_below_the_nearest_variant(
    case: tuple[dict[str, Any], dict[str, str]],
) -> None:
    raw, chosen = case
    m = catalog_of(raw).models["prop"]
    quote = m.quote(chosen)
    variants = raw["pricing"]["variants"]
    exact = [v for v in variants if all(chosen[k] == x for k, x in v["params"].items())]
    if exact:
        assert quote.exact
        assert quote.kopecks == reference_kopecks(raw, exact[0]["rub"], chosen)
        return
    distances = [reference_distance(raw, chosen, v["params"]) for v in variants]
    nearest = [v for v, d in zip(variants, distances, strict=True) if d == min(distances)]
    prices = [reference_kopecks(raw, v["rub"], chosen) for v in nearest]
    assert not quote.exact
    assert quote.distance == min(distances)
    assert quote.variant.values in [v["params"] for v in nearest]
    assert all(quote.kopecks >= price for price in prices)
    assert quote.kopecks == max(prices)
    assert m.price_kopecks(chosen) == quote.kopecks > 0


def test_the_price_file_schema_is_a_valid_json_schema() -> None:
    # The service trusts it without checking at start-up.
    Draft202012Validator.check_schema(schema())
    with pytest.raises(SchemaError):
        Draft202012Validator.check_schema({"type": "no such type"})
