"""`activepref/__init__.py` exports what its docstring promises, without importing torch."""

from __future__ import annotations

import subprocess
import sys

import activepref


def test_every_promised_name_resolves_to_its_module() -> None:
    from activepref.acquisition import available, get_method, register, register_design
    from activepref.backends import register_backend
    from activepref.config import RunConfig, load_config
    from activepref.core.export import export_run
    from activepref.core.runs import resume, run, status
    from activepref.core.store import PreferenceRecord
    from activepref.judges import register_judge
    from activepref.live.embedders import register_embedder
    from activepref.pools.records import Prompt, Response
    from activepref.registry import Registry

    expected = {
        "Prompt": Prompt, "Response": Response, "PreferenceRecord": PreferenceRecord, "RunConfig": RunConfig,
        "load_config": load_config, "run": run, "resume": resume, "status": status, "export_run": export_run,
        "Registry": Registry, "register": register, "register_design": register_design, "get_method": get_method,
        "available": available, "register_judge": register_judge, "register_backend": register_backend,
        "register_embedder": register_embedder,
    }
    for name, obj in expected.items():
        assert getattr(activepref, name) is obj, name
        assert name in activepref.__all__ and name in activepref.__doc__, name
    assert set(activepref.__all__) >= set(expected) | {"ActivePrefError", "ConfigError", "__version__"}


def test_import_activepref_and_its_config_needs_no_torch() -> None:
    code = "import sys, activepref; activepref.RunConfig; activepref.register; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
