import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    install_and_export, install_and_test = blocks[0], blocks[1]
    assert readme.index(install_and_export) < readme.index("headpatch makes")
    assert install_and_export.endswith("headpatch export smollm2-135m -o ./smollm2-135m-pear --ladder 10,20,40")
    assert install_and_test.endswith("pytest -q")
    assert install_and_test in (ROOT / ".ci" / "run").read_text().splitlines()
