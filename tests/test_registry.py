"""The Registry class: registration, lookup, listing, plugins."""

from __future__ import annotations

import importlib.metadata
import inspect
import sys
import warnings

import pytest

import registry
from registry.core import DuplicateNameError, Registry, UnknownNameError, import_plugin_module
from registry.errors import ContractError, UserError


@pytest.fixture
def reg() -> Registry:
    r = Registry("widget", "partialseg-test.widgets", "Widgets: builders (**kw) -> dict.")

    @r.register("resnet18")
    def resnet18(depth: int = 18, width: int | None = None):
        return {"depth": depth, "width": width}

    @r.register("resnet101")
    def resnet101(depth: int = 101):
        return {"depth": depth}

    @r.register("resnet2")
    def resnet2():
        return {}

    @r.register("vit_tiny")
    def vit_tiny(**kw):
        return kw

    return r


def fake_entry_points(monkeypatch, points: list[importlib.metadata.EntryPoint]) -> None:
    def entry_points(group: str):
        return [p for p in points if p.group == group]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_decorator_registers_and_returns_builder(reg):
    @reg.register()
    def by_function_name():
        return 1

    assert by_function_name() == 1
    assert "by_function_name" in reg
    assert reg.create("by_function_name") == 1


def test_duplicate_name_is_refused_and_original_kept(reg):
    with pytest.raises(DuplicateNameError, match="resnet18.*already registered"):
        reg.register("resnet18")(lambda: "impostor")
    assert reg.create("resnet18")["depth"] == 18


def test_unknown_name_lists_close_matches(reg):
    with pytest.raises(UnknownNameError) as info:
        reg.entry("resnet19")
    message = str(info.value)
    assert "unknown widget 'resnet19'" in message and "resnet18" in message
    assert isinstance(info.value, UserError)


def test_unknown_name_without_close_match_lists_known(reg):
    with pytest.raises(UnknownNameError, match="known: resnet2, resnet18, resnet101, vit_tiny"):
        reg.entry("zzz")


def test_list_natural_order_wildcards_and_exclude(reg):
    assert reg.list() == ["resnet2", "resnet18", "resnet101", "vit_tiny"]
    assert reg.list("resnet*") == ["resnet2", "resnet18", "resnet101"]
    assert reg.list(["vit*", "*101"]) == ["resnet101", "vit_tiny"]
    assert reg.list("resnet*", exclude="*1*") == ["resnet2"]


def test_none_kwargs_are_dropped(reg):
    assert reg.create("resnet18", depth=None, width=None) == {"depth": 18, "width": None}
    assert reg.create("vit_tiny", a=1, b=None) == {"a": 1}


def test_wrong_keyword_is_a_user_error(reg):
    with pytest.raises(UserError, match="widget 'resnet101'.*width"):
        reg.create("resnet101", width=3)


def test_container_protocol(reg):
    assert len(reg) == 4
    assert list(reg) == reg.list()
    assert "resnet18" in repr(reg)
    assert 3 not in reg


def test_invalid_name_refused(reg):
    with pytest.raises(UserError, match="invalid widget name"):
        reg.register("has space")(lambda: None)


def test_contract_check_runs_on_built_objects():
    def ints_only(name, built):
        if not isinstance(built, int):
            raise TypeError(f"thing {name!r} built {built!r}")

    checked = Registry("thing", "partialseg-test.things", "Things are ints.", check=ints_only)
    checked.register("good")(lambda: 1)
    checked.register("bad")(lambda: "one")
    assert checked.create("good") == 1
    with pytest.raises(TypeError, match="bad"):
        checked.create("bad")


class _NoAttributes:
    """Callable, but with none of the attributes an architecture, a masker or a dataset must have."""

    def __call__(self, *args, **kwargs):
        return None


@pytest.mark.parametrize("contract_registry, message", [
    (registry.ARCHS, "built _NoAttributes, not a torch.nn.Module"),
    (registry.MASKERS, "has no bool attribute uses_fraction"),
    (registry.DATASETS, "lacks num_classes, class_names"),
])
def test_an_entry_breaking_its_contract_is_a_one_line_error_naming_its_module(contract_registry, message):
    contract_registry.register("contract_breaker")(lambda *args, **kwargs: _NoAttributes())
    try:
        with pytest.raises(ContractError) as caught:
            contract_registry.create("contract_breaker", **({"num_classes": 2} if contract_registry is registry.ARCHS
                                                            else {}))
    finally:
        contract_registry._entries.pop("contract_breaker")
    text = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in text
    assert f"'contract_breaker' {message}" in text or f"'contract_breaker': {message}" in text, text
    variable = contract_registry.group.rsplit(".", 1)[-1].upper()
    assert text.endswith(f"(registered by module {__name__}; the contract: help(registry.{variable}))")


def test_the_source_of_a_built_in_entry_is_built_in():
    assert registry.ARCHS.entry("unet").source == "built-in"
    assert registry.ARCHS.entry("tu-resnet18").source == "built-in"


def test_entry_point_plugins_are_listed_without_import_and_loaded_on_demand(reg, monkeypatch, tmp_path):
    module = tmp_path / "lazy_widget_plugin.py"
    module.write_text("IMPORTED = True\ndef build(size=3):\n    return {'size': size}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_entry_points(monkeypatch, [
        importlib.metadata.EntryPoint("plugged", "lazy_widget_plugin:build", "partialseg-test.widgets"),
        importlib.metadata.EntryPoint("elsewhere", "lazy_widget_plugin:build", "partialseg-test.other"),
    ])
    assert "plugged" in reg.list()
    assert "elsewhere" not in reg.list()
    assert "lazy_widget_plugin" not in sys.modules  # listed, not imported
    assert reg.create("plugged", size=5) == {"size": 5}
    assert reg.entry("plugged").source.startswith("plugin")
    sys.modules.pop("lazy_widget_plugin", None)


def test_broken_plugin_becomes_a_warning(reg, monkeypatch):
    fake_entry_points(monkeypatch, [
        importlib.metadata.EntryPoint("broken", "module_that_does_not_exist_anywhere:build", "partialseg-test.widgets"),
    ])
    assert "broken" in reg.list()
    with pytest.warns(UserWarning, match="plugin 'broken'.*failed to load"), pytest.raises(UnknownNameError):
        reg.entry("broken")
    assert reg.create("resnet2") == {}  # the registry still works


def test_plugin_cannot_take_a_builtin_name(reg, monkeypatch):
    fake_entry_points(monkeypatch, [
        importlib.metadata.EntryPoint("resnet18", "os:getcwd", "partialseg-test.widgets"),
    ])
    with pytest.warns(UserWarning, match="ignored: that name is taken"):
        reg.list()
    assert reg.create("resnet18")["depth"] == 18


def test_plugin_module_by_path_registers_entries(tmp_path):
    plugin = tmp_path / "my_local_plugin.py"
    plugin.write_text(
        "from registry import register_masker\n"
        "from registry.maskers.pixels import FullLabels\n"
        "register_masker('my_local_masker')(FullLabels)\n"
    )
    import_plugin_module(str(plugin))
    try:
        assert "my_local_masker" in registry.list_maskers()
    finally:
        registry.MASKERS._entries.pop("my_local_masker")


def test_plugin_module_by_dotted_name(tmp_path, monkeypatch):
    (tmp_path / "dotted_plugin_pkg").mkdir()
    (tmp_path / "dotted_plugin_pkg" / "__init__.py").write_text("")
    (tmp_path / "dotted_plugin_pkg" / "losses.py").write_text(
        "from registry import register_loss\n"
        "from registry.losses.partial_ce import PartialCrossEntropy\n"
        "register_loss('my_dotted_loss')(PartialCrossEntropy)\n"
    )
    monkeypatch.chdir(tmp_path)
    import_plugin_module("dotted_plugin_pkg.losses")
    try:
        assert "my_dotted_loss" in registry.list_losses()
    finally:
        registry.LOSSES._entries.pop("my_dotted_loss")


@pytest.mark.parametrize("spec", ["no_such_module_xyz", "missing_file.py"])
def test_plugin_module_errors_are_user_errors(spec):
    with pytest.raises(UserError, match="plugin"):
        import_plugin_module(spec)


def test_public_api_is_importable_from_registry():
    for name in ("register_arch", "register_loss", "register_masker", "register_dataset", "create_arch",
                 "create_loss", "create_masker", "create_dataset", "list_archs", "list_losses", "list_maskers",
                 "list_datasets"):
        assert callable(getattr(registry, name))
    assert {"unet", "unetplusplus"} <= set(registry.list_archs())
    assert "partial_ce" in registry.list_losses()
    assert {"full", "random_pixels"} <= set(registry.list_maskers())
    assert "synthetic" in registry.list_datasets()


@pytest.mark.parametrize("reg_", [registry.ARCHS, registry.LOSSES, registry.MASKERS,
                                 registry.REGULARIZERS, registry.DATASETS],
                         ids=lambda r: r.kind)
def test_every_registry_documents_its_contract(reg_):
    assert reg_.__doc__ and len(reg_.__doc__) > 100
    assert reg_.group.startswith("partialseg.")


def test_no_warning_when_registries_are_listed():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for reg_ in (registry.ARCHS, registry.LOSSES, registry.MASKERS, registry.REGULARIZERS, registry.DATASETS):
            reg_.list()


# -- name families (register_prefix) -----------------------------------------------------------------------------------


@pytest.fixture
def fam(reg) -> Registry:
    """``reg`` with the family ``hub-<model>`` over three known models, two of them listed."""

    @reg.register_prefix("hub-", known=lambda: ["alpha", "alphabet", "beta"], listed=["hub-alpha", "hub-beta"],
                         what="a hub model name", test_kwargs={"scale": 1})
    def hub(model: str, scale: int = 2, bias: float | None = None):
        return {"model": model, "scale": scale, "bias": bias}

    return reg


def test_family_name_resolves_through_the_prefix_builder(fam):
    assert fam.create("hub-alphabet", scale=3) == {"model": "alphabet", "scale": 3, "bias": None}
    assert fam.create("hub-beta", bias=None) == {"model": "beta", "scale": 2, "bias": None}  # None dropped
    entry = fam.entry("hub-alphabet")
    assert entry.name == "hub-alphabet" and entry.test_kwargs == {"scale": 1}
    assert fam.entry("hub-alphabet") is entry  # made once
    # The entry's signature is the builder's without its first argument: what the grid binds keyword arguments to.
    assert list(inspect.signature(entry.builder).parameters) == ["scale", "bias"]
    with pytest.raises(TypeError):
        inspect.signature(entry.builder).bind_partial(model="beta")


def test_family_lists_only_its_listed_names_but_contains_every_known_one(fam):
    assert fam.list() == ["hub-alpha", "hub-beta", "resnet2", "resnet18", "resnet101", "vit_tiny"]
    assert fam.list("hub-*") == ["hub-alpha", "hub-beta"]
    assert "hub-alphabet" in fam and "hub-alpha" in fam
    assert "hub-gamma" not in fam and "hub-" not in fam
    assert "hub-*" in repr(fam)


def test_family_unknown_name_gets_close_matches_from_the_known_list(fam):
    with pytest.raises(UnknownNameError, match=r"unknown widget 'hub-alphabat'; did you mean 'hub-alphabet'.*"
                                               r"\('hub-' takes a hub model name\)"):
        fam.entry("hub-alphabat")
    with pytest.raises(UnknownNameError, match=r"unknown widget 'hub-zzz'; 'hub-' takes a hub model name$"):
        fam.create("hub-zzz")
    with pytest.raises(UserError, match="widget 'hub-beta'.*depth"):
        fam.create("hub-beta", depth=3)


def test_family_without_known_list_takes_any_rest(reg):
    reg.register_prefix("any-")(lambda rest: rest.upper())
    assert reg.create("any-thing") == "THING"
    assert "any-other" in reg


def test_family_owns_its_prefix(fam, monkeypatch):
    with pytest.raises(DuplicateNameError, match="'hub-'"):
        fam.register("hub-delta")(lambda: None)
    with pytest.raises(DuplicateNameError, match="overlaps 'hub-'"):
        fam.register_prefix("hub-x")(lambda rest: rest)
    with pytest.raises(DuplicateNameError, match="overlaps 'hub-'"):
        fam.register_prefix("hu")(lambda rest: rest)
    with pytest.raises(DuplicateNameError, match="'resnet18'"):
        fam.register_prefix("resnet1")(lambda rest: rest)
    with pytest.raises(UserError, match="does not start with"):
        fam.register_prefix("new-", listed=["old-one"])(lambda rest: rest)
    fake_entry_points(monkeypatch, [
        importlib.metadata.EntryPoint("hub-gamma", "os:getcwd", "partialseg-test.widgets"),
    ])
    with pytest.warns(UserWarning, match="'hub-gamma'.*ignored: that name is taken"):
        fam.list()
    assert "hub-gamma" not in fam
