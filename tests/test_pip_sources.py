"""tools.pip_sources: pip's configured package sources, as the options uv installs the venv with."""

from tools.pip_sources import uv_args

# `pip config list` on the CI machine: a file's settings and the same find-links from the environment
CI_MACHINE = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.default-timeout='180'
:env:.find-links='/opt/wheels'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels'
"""


def test_the_ci_machines_sources_become_uvs_each_once():
    assert uv_args(CI_MACHINE) == [
        "--index-strategy", "unsafe-best-match",
        "--find-links", "/opt/wheels",
        "--extra-index-url", "file:///opt/pypi/simple",
        "--extra-index-url", "file:///opt/pypi-more/simple",
        "--constraint", "/etc/xdg/pip/constraints.txt",
    ]  # fmt: skip


def test_the_environment_s_index_wins_over_the_files_and_values_on_several_lines_split():
    listed = (
        ":env:.index-url='https://mirror.hospital.example/simple'\n"
        "global.index-url='https://pypi.org/simple'\n"
        "global.extra-index-url='file:///a/simple\\nfile:///b/simple'\n"
        "site.timeout='60'\n"
    )
    assert uv_args(listed) == [
        "--index-strategy", "unsafe-best-match",
        "--index-url", "https://mirror.hospital.example/simple",
        "--extra-index-url", "file:///a/simple",
        "--extra-index-url", "file:///b/simple",
    ]  # fmt: skip


def test_no_index_is_kept_and_nothing_configured_leaves_uv_its_defaults():
    assert "--no-index" in uv_args("install.no-index='true'\nglobal.find-links='/wheels'\n")
    assert uv_args("") == ["--index-strategy", "unsafe-best-match"]
