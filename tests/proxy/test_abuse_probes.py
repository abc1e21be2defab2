"""The fast abuse probes of bench/abuse/, each against a real ``warmproxy serve`` process.

Each probe runs the proxy as a process on loopback in this test's tmp dir and
returns its checks; a failed check names the case and what the proxy did.  The
slow probes (faults, unique URLs, a thousand connections) stay in bench/abuse/.
"""

from __future__ import annotations

from pathlib import Path

from bench.abuse import framing, garbage_origin, poisoning, ssrf


async def test_smuggling_and_framing_are_refused_and_nothing_is_cached(tmp_path: Path) -> None:
    report = await framing.run(tmp_path, rounds=1)
    assert not report.failed, report.failures()
    refusals = sum(case.refuse for case in framing.CASES)
    assert report.figures["refused"] == f"{refusals}/{refusals}"


async def test_a_garbage_origin_never_leaves_a_truncated_entry(tmp_path: Path) -> None:
    report = await garbage_origin.run(tmp_path, drip_bytes=8, read_timeout=1.0)
    assert not report.failed, report.failures()
    assert report.figures["broken answers served as complete"] == "0"


async def test_no_forwarding_or_override_header_poisons_a_clean_client(tmp_path: Path) -> None:
    # Round 2 sends each header lower-cased with a list value.
    report = await poisoning.run(tmp_path, rounds=2)
    assert not report.failed, report.failures()
    assert len(report.passed) == 2 * len(poisoning.ATTACKS)


async def test_no_url_path_or_dsn_field_reaches_another_host_or_leaks_a_file(
    tmp_path: Path,
) -> None:
    report = await ssrf.run(tmp_path)
    assert not report.failed, report.failures()
    assert report.figures["canary connections"] == "0"
