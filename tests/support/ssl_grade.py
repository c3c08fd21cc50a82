"""An SSL Labs-style grade computed from a scan summary (security checklist §0.1, R-TLS-11).

Implements the rules of Qualys' *SSL Server Rating Guide* (2009 series) and
the caps SSL Labs announced since (no TLS 1.2 → C, 2015; 3DES with TLS 1.1+
→ C, 2016/17; no forward secrecy / no AEAD → B, ROBOT → F, 2018; TLS 1.0/1.1
→ B, 2020), as far as a scan on loopback can check them, cross-checked with
testssl.sh's ``run_rating()``:

* score = 30 % protocol + 30 % key exchange + 40 % cipher strength; each of
  protocol and cipher strength is (best + worst) / 2 of what is offered;
* caps: T (trust), M (name), F, C, B as listed in :func:`grade`;
* A+ = A with no warning and HSTS max-age >= 180 days; any warning → A-.

The summary is the JSON ``sslyze_scan.py`` prints (a plain dict), so the
rules are unit-tested on hand-made summaries too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROTOCOL_SCORE = {
    "SSLv2": 0,
    "SSLv3": 80,
    "TLSv1.0": 90,
    "TLSv1.1": 95,
    "TLSv1.2": 100,
    "TLSv1.3": 100,
}
HSTS_MIN_A_PLUS = 15552000  # 180 days
LETTERS = ((80, "A"), (65, "B"), (50, "C"), (35, "D"), (20, "E"), (0, "F"))


@dataclass
class Grade:
    letter: str
    score: float
    caps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def cipher_score(bits: int) -> int:
    if bits <= 0:
        return 0
    if bits < 128:
        return 20
    if bits < 256:
        return 80
    return 100


def key_exchange_score(key_type: str, bits: int) -> int:
    if key_type == "EC":
        return 100 if bits >= 225 else 90 if bits >= 160 else 80 if bits >= 110 else 40
    if bits < 512:
        return 20
    if bits < 1024:
        return 40
    if bits < 2048:
        return 80
    if bits < 4096:
        return 90
    return 100


def _offered(summary: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {v: s for v, s in summary["protocols"].items() if s}


def grade(summary: dict[str, Any]) -> Grade:
    offered = _offered(summary)
    suites = [s for group in offered.values() for s in group]
    leaf = summary["leaf"]
    caps: list[tuple[str, str]] = []  # (cap letter, why)
    warnings: list[str] = []
    if not offered:
        return Grade("F", 0.0, ["F: no protocol offered"])

    # ---- scores
    protocol_scores = [PROTOCOL_SCORE[v] for v in offered]
    protocol = (max(protocol_scores) + min(protocol_scores)) / 2
    kx = key_exchange_score(leaf["key_type"], leaf["key_size"])
    if any(s["anonymous"] for s in suites):
        kx = 0
    bits = [s["key_size"] for s in suites]
    cipher = (cipher_score(max(bits)) + cipher_score(min(bits))) / 2
    score = 0.3 * protocol + 0.3 * kx + 0.4 * cipher

    # ---- caps
    if not leaf["trusted"]:
        caps.append(("T", "certificate not trusted"))
    if leaf["expired"]:
        caps.append(("T", "certificate expired"))
    if leaf["signature_hash"] in ("sha1", "md5"):
        caps.append(("T" if leaf["signature_hash"] == "sha1" else "F", "weak signature"))
    if not leaf["name_matches"]:
        caps.append(("M", "certificate name mismatch"))
    if "SSLv2" in offered:
        caps.append(("F", "SSLv2"))
    if any(s["export"] or s["anonymous"] for s in suites):
        caps.append(("F", "export or anonymous suites"))
    if summary["heartbleed"]:
        caps.append(("F", "Heartbleed"))
    if summary["ccs_injection"]:
        caps.append(("F", "CCS injection"))
    if summary["robot_vulnerable"]:
        caps.append(("F", "ROBOT"))
    if summary["insecure_renegotiation"]:
        caps.append(("F", "insecure renegotiation"))
    if "SSLv3" in offered:
        caps.append(("C", "SSLv3 (POODLE)"))
    if summary["compression"]:
        caps.append(("C", "TLS compression (CRIME)"))
    if any("3DES" in s["name"] or "DES_CBC3" in s["name"] for s in suites) and any(
        v in offered for v in ("TLSv1.1", "TLSv1.2", "TLSv1.3")
    ):
        caps.append(("C", "3DES with TLS 1.1+"))
    if "TLSv1.2" not in offered and "TLSv1.3" not in offered:
        caps.append(("C", "neither TLS 1.2 nor 1.3"))
    if "TLSv1.0" in offered or "TLSv1.1" in offered:
        caps.append(("B", "TLS 1.0/1.1 offered"))
    if not any(s["forward_secret"] for s in suites):
        caps.append(("B", "no forward secrecy"))
    if not any(s["aead"] for s in suites):
        caps.append(("B", "no AEAD suites"))
    if leaf["key_type"] == "RSA" and leaf["key_size"] < 2048:
        caps.append(("B", "RSA key < 2048 bits"))
    if not leaf["chain_complete"]:
        caps.append(("B", "incomplete chain"))
    if any("RC4" in s["name"] for s in suites):
        caps.append(("B", "RC4"))

    # ---- warnings (A -> A-)
    if "TLSv1.3" not in offered:
        warnings.append("no TLS 1.3")
    if len(offered) > 1 and not summary["fallback_scsv"]:
        warnings.append("several versions without TLS_FALLBACK_SCSV")
    hsts = summary.get("hsts")
    if not hsts:
        warnings.append("no HSTS")
    elif hsts["max_age"] < HSTS_MIN_A_PLUS:
        warnings.append("HSTS max-age under 180 days")

    letter = next(letter for floor, letter in LETTERS if score >= floor)
    for cap, _why in caps:
        letter = _worse(letter, cap)
    if letter == "A":
        letter = "A-" if warnings else "A+"
    return Grade(letter, score, [f"{c}: {why}" for c, why in caps], warnings)


def _worse(current: str, cap: str) -> str:
    """The worse of a score letter (A-F) and a cap (T, M, F, C, B)."""
    rank = {"A": 0, "B": 1, "C": 2, "D": 3, "E": 4, "F": 5, "M": 6, "T": 7}
    return cap if rank[cap] > rank[current] else current
