"""The one registry helper: registration, lookups with one-line errors, lazy discovery of built-in
modules and of entry-point plugins, and the catalogues built on it."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
import uuid

import pytest

from semiseg.errors import ConfigError
from semiseg.registry import Registry


def local(kind: str = "thing", **kwargs) -> Registry:
    return Registry(kind, package=None, group=None, **kwargs)


# ---------------------------------------------------------------------------------------- basics
def test_register_get_names_contains():
    reg = local()

    @reg.register("beta")
    def beta():
        return 2

    assert reg.register("alpha", len) is len  # call form returns the object
    assert beta() == 2  # the decorator returns the object unchanged
    assert reg.get("beta") is beta and reg["alpha"] is len
    assert reg.names() == ["alpha", "beta"] and list(reg) == ["alpha", "beta"] and len(reg) == 2
    assert "alpha" in reg and "gamma" not in reg and 3 not in reg
    assert reg.pop("alpha") is len and reg.pop("alpha") is None and reg.names() == ["beta"]


def test_name_attr_is_set_on_registration():
    reg = local(name_attr="method_name")

    @reg.register("tv")
    class TV:
        pass

    assert TV.method_name == "tv"


@pytest.mark.parametrize(
    ("name", "where", "message"),
    [
        ("supervized", "method.name",
         "method.name: unknown method 'supervized' (did you mean 'supervised'? known: size, supervised, tv)"),
        ("zzz", "method.name", "method.name: unknown method 'zzz' (known: size, supervised, tv)"),
        ("zzz", None, "method: unknown method 'zzz' (known: size, supervised, tv)"),
        (None, "method.name", "method.name: unknown method None (known: size, supervised, tv)"),
    ],
)  # fmt: skip
def test_unknown_name_is_one_line_config_error_with_suggestion(name, where, message):
    reg = local("method")
    for n in ("supervised", "tv", "size"):
        reg.register(n, object())
    with pytest.raises(ConfigError) as info:
        reg.get(name, where=where)
    assert str(info.value) == message


def test_empty_registry_says_so():
    with pytest.raises(ConfigError, match=r"unknown thing 'x' \(known: none registered\)"):
        local().get("x")


def test_same_name_twice_is_an_error_unless_the_same_definition():
    reg = local()

    def f():
        pass

    reg.register("f", f)
    reg.register("f", f)  # the same object again: fine

    def g():
        pass

    with pytest.raises(ValueError, match="'f' is already registered"):
        reg.register("f", g)
    # a module imported twice / reloaded defines an equal-named new object: it replaces the old one
    first = type("Spec", (), {"__module__": "plugins.x"})
    again = type("Spec", (), {"__module__": "plugins.x"})
    reg.register("spec", first)
    reg.register("spec", again)
    assert reg.get("spec") is again
    with pytest.raises(ValueError):
        reg.register("", f)


# ------------------------------------------------------------------------------------ discovery
@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """A package ``pkg`` with a registry over its own modules: ``a`` and ``b`` register, ``_hidden`` must
    never be imported."""
    name = f"regtest_{uuid.uuid4().hex[:8]}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text(
        "from semiseg.registry import Registry\n"
        f"REG = Registry('widget', package={name!r}, group='semiseg.test_widgets')\n"
    )
    (root / "a.py").write_text(f"from {name} import REG\n\n@REG.register('a')\ndef a():\n    return 'a'\n")
    (root / "b.py").write_text(
        f"from {name} import REG\n\nREG.register('b', 'bee')\nSEEN = REG.names()  # a lookup while discovering\n"
    )
    (root / "_hidden.py").write_text("raise RuntimeError('private modules are not plugins')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def test_modules_of_the_package_are_imported_on_first_lookup_only(plugin_package):
    pkg = importlib.import_module(plugin_package)
    assert f"{plugin_package}.a" not in sys.modules  # creating the registry imports nothing
    assert pkg.REG.names() == ["a", "b"]
    assert f"{plugin_package}.a" in sys.modules and f"{plugin_package}._hidden" not in sys.modules
    assert set(sys.modules[f"{plugin_package}.b"].SEEN) <= {"a", "b"}  # no recursion, no deadlock
    assert pkg.REG.get("a")() == "a"


def test_a_failing_builtin_module_raises_and_is_retried(plugin_package, tmp_path):
    (tmp_path / plugin_package / "c.py").write_text("raise ImportError('broken built-in')\n")
    pkg = importlib.import_module(plugin_package)
    with pytest.raises(ImportError, match="broken built-in"):
        pkg.REG.names()
    (tmp_path / plugin_package / "c.py").write_text("")
    importlib.invalidate_caches()
    assert pkg.REG.names() == ["a", "b"]


def test_entry_point_plugins(plugin_package, tmp_path, monkeypatch):
    (tmp_path / f"{plugin_package}_ext.py").write_text(
        f"from {plugin_package} import REG\n\n"
        "@REG.register('self_registered')\nclass SelfRegistered:\n    pass\n\n"
        "class Plain:\n    pass\n"
    )
    group = "semiseg.test_widgets"
    eps = [
        importlib.metadata.EntryPoint("by_module", f"{plugin_package}_ext", group),  # import registers
        importlib.metadata.EntryPoint("plain", f"{plugin_package}_ext:Plain", group),  # registered as "plain"
        importlib.metadata.EntryPoint("broken", "no_such_module_xyz:thing", group),
    ]
    real = importlib.metadata.entry_points

    def fake(**kwargs):
        return [e for e in eps if e.group == kwargs.get("group")] if "group" in kwargs else real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    pkg = importlib.import_module(plugin_package)
    with pytest.warns(UserWarning, match="skipping widget plugin 'broken'"):
        names = pkg.REG.names()
    assert names == ["a", "b", "plain", "self_registered"]
    assert pkg.REG.get("plain").__name__ == "Plain"


def test_default_entry_point_group():
    assert Registry("method").group == "semiseg.methods"
    assert Registry("dataset").group == "semiseg.datasets"
    assert Registry("table", group=None).group is None


def test_importing_the_registry_and_the_cli_is_light():
    code = textwrap.dedent(
        """
        import sys
        import semiseg.registry, semiseg.cli
        heavy = [m for m in ("torch", "monai", "matplotlib", "semiseg.methods", "semiseg.data") if m in sys.modules]
        print(",".join(heavy))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ------------------------------------------------------------------------------- the catalogues
def test_builtin_catalogues_are_discovered():
    from semiseg.config import DATASETS
    from semiseg.losses.regularizers import REGULARIZERS
    from semiseg.methods import METHODS, method_names
    from semiseg.models import MODELS

    assert {"supervised", "tv", "size"} <= set(method_names()) == set(METHODS)
    assert all(METHODS.get(n).method_name == n for n in METHODS)
    assert {"unet", "monai_unet"} <= set(MODELS)
    assert {"tv", "size"} <= set(REGULARIZERS)
    assert all(REGULARIZERS.get(n).registered_name == n for n in REGULARIZERS)
    assert {"shapes", "folder", "weizmann", "acdc", "acdc_lv", "mnist"} <= set(DATASETS)


def test_catalogue_errors_name_the_config_key():
    from semiseg.config import ModelConfig, build_config
    from semiseg.methods import build_method
    from semiseg.models import build_model

    suggestion = r" \(did you mean '{}'\? known: "
    with pytest.raises(
        ConfigError, match=r"^method\.name: unknown method 'supervisd'" + suggestion.format("supervised")
    ):
        build_method({"name": "supervisd"}, ModelConfig(), in_channels=1, num_classes=2)
    with pytest.raises(ConfigError, match=r"^model\.name: unknown model 'unte'" + suggestion.format("unet")):
        build_model(ModelConfig(name="unte"), 1, 2)
    with pytest.raises(
        ConfigError, match=r"^s\.yaml: data\.dataset: unknown dataset 'shape'" + suggestion.format("shapes")
    ):
        build_config({"data": {"dataset": "shape"}}, source="s.yaml")
