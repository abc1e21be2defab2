"""The control API against its OpenAPI document, for longer than the test suite does.

Starts a local origin and the proxy in front of it (on a thread of this
process, as ``tests/proxy/test_openapi_schemathesis.py`` does), runs
schemathesis over every operation of the document the proxy serves (its
examples, coverage, fuzzing and stateful phases; valid and invalid data), and
prints the cases run, the statuses answered, how long it took, and every
failure: an undocumented status, a body off its schema, a 5xx, an invalid
request accepted or a valid one refused.  Asserts nothing; exits 1 when
there was a failure.

    .venv/bin/python bench/api_fuzz.py [--max-examples 1000] [--seed N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.proxy.test_openapi_schemathesis import fuzz, served


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--max-examples", type=int, default=1000, help="examples per operation and phase"
    )
    parser.add_argument("--seed", type=int, default=None, help="repeat a run (default: random)")
    args = parser.parse_args(argv)
    # The probes send what the HTTP parser refuses (a NUL in a header), and
    # warm runs of generated paths fail: the run's figures say what matters.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    logging.getLogger("warmer").setLevel(logging.ERROR)
    with (
        tempfile.TemporaryDirectory(prefix="warmproxy-api-fuzz-") as state,
        served(Path(state)) as proxy,
    ):
        result = fuzz(proxy.control_url, max_examples=args.max_examples, seed=args.seed)
    print(f"operations tested       {result.operations} of {result.documented_operations}")
    print(f"cases run               {result.cases}")
    print(f"cases with failures     {result.cases_with_failures}")
    print(f"cases errored           {result.errored_cases}")
    print(f"seconds                 {result.seconds:.1f}")
    print(f"cases per second        {result.cases / result.seconds:.0f}")
    print(
        "statuses                "
        + ", ".join(f"{s}: {n}" for s, n in sorted(result.statuses.items()))
    )
    print(f"origin requests         {proxy.origin_requests}")
    print(f"failures                {len(result.failures)}")
    for failure in result.failures:
        print("\n" + failure)
    for error in result.errors:
        print("\nerror: " + error)
    return 1 if result.failures or result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
