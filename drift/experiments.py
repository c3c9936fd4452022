"""Online experiments: user assignment, always-valid comparisons, sample-ratio and guardrail checks.

Assignment
    A user's bucket is the first 8 bytes of ``sha256(salt + ":" + user_id)`` read as a number in
    [0, 1); the user is in the ``treatment`` arm when the bucket is below the treatment's share,
    else in ``control``. It needs no state (every worker agrees), it is sticky (the same user
    always lands in the same arm), and raising the share only moves control users into
    treatment, never back.

Per-user outcomes
    The unit is the user (assignment is per user, so users, not lists, are independent). For
    user u with L_u served lists of which C_u drew at least one attributed click, the primary
    outcome is ``ctr`` y_u = C_u / L_u; ``conversion`` is 1 when u has an attributed purchase.

Always-valid confidence sequence on the difference
    For arm means m_c, m_t with per-user sample variances s_c^2, s_t^2 over n_c, n_t users,
    N = n_c + n_t, the difference is d = m_t - m_c with variance V = s_t^2/n_t + s_c^2/n_c,
    and the relative lift is l = d / m_c with the delta-method variance
    V_l = s_t^2 / (m_c^2 n_t) + s_c^2 m_t^2 / (m_c^4 n_c). The asymptotic confidence sequence
    (Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and
    asymptotic confidence sequences", Annals of Statistics 2024, arXiv:2103.06476, eq. 9, as
    GrowthBook's ``SequentialTwoSidedTTest`` applies it) is

        d +- sqrt(V N) sqrt( 2 (N rho^2 + 1) / (N^2 rho^2) * log( sqrt(N rho^2 + 1) / alpha ) )

    with rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / T (their eq. 161), which makes it
    tightest at N = T users (``tuning_users``; GrowthBook's default is 5000). It covers the true
    difference at every N at once with probability about 1 - alpha, so it may be looked at
    after every user. The always-valid p-value (their eq. 155) is
    min(1, sqrt(N rho^2 + 1) exp(-rho^2 N d^2 / (2 V (N rho^2 + 1)))).

Sample-ratio mismatch
    Pearson's chi-square of the users per arm against the configured shares
    (:func:`scipy.stats.chisquare`); p < 0.001 flags the experiment and withholds its verdict.

Guardrails (per arm, from served lists)
    error rate (answers that failed with a 5xx once the user was assigned, over all answers),
    empty-list rate (answers with no item), and p99 latency (ms the view took to build the
    answer: ranking and logging, not the network or the HTTP server's queue).

Team-draft interleaving (``kind = 'interleave'``)
    Instead of splitting users, a share of users get one list merged from both versions'
    rankings (:func:`team_draft`, Radlinski, Kurup and Joachims, "How does clickthrough data
    reflect retrieval quality?", CIKM 2008): each round a coin decides which team picks first,
    and each team adds its best item not yet in the list. Every slot records the team that put
    it there. A click credits its slot's team (repeat clicks on one slot count once). A user
    prefers the team their clicks credit more; users whose clicks credit both equally are ties.
    With W users preferring the treatment and L the control, the sign test is
    :func:`scipy.stats.binomtest` of W in W + L at 1/2 (a fixed-horizon p-value), and the
    verdict uses the always-valid p-value of the uniform-mixture likelihood ratio
    min(1, 1 / (B(W + 1, L + 1) 2^(W+L))) (Robbins, 1970; by Ville's inequality it may be looked
    at after every user), ``delta`` = (W - L) / (W + L + ties) (Chapelle, Joachims, Radlinski and
    Yue, "Large-scale validation and analysis of interleaved search evaluation", TOIS 2012).
    Interleaving needs far less traffic than an A/B split for the same question (which of two
    rankings shoppers prefer), but says nothing about conversion or revenue.

Examples
--------
>>> assign("exp-1", "u42", 0.5), assign("exp-1", "u42", 0.5)  # sticky
('treatment', 'treatment')
>>> control, treatment = np.r_[np.ones(80), np.zeros(120)], np.r_[np.ones(20), np.zeros(180)]
>>> result = compare(control, treatment, alpha=0.05, tuning_users=500)  # per-user CTR 0.4 against 0.1
>>> round(result["difference"], 2), result["upper"] < 0, result["lift_upper"] < 0, result["p_value"] < 0.05
(-0.3, True, True, True)
>>> sample_ratio([5300, 4700], [0.5, 0.5])["flagged"]
True
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special, stats

ARMS = ("control", "treatment")
SRM_P = 0.001
"""A sample-ratio mismatch p-value below this flags an experiment and withholds its verdict."""
METRICS = ("ctr", "conversion")
PRIMARY = "ctr"


def bucket(salt: str, user_id: str) -> float:
    """The user's place in [0, 1) under ``salt``: sha256 of ``salt:user_id``, first 8 bytes.

    >>> 0 <= bucket("s", "u1") < 1, bucket("s", "u1") == bucket("s", "u1"), bucket("s", "u1") != bucket("t", "u1")
    (True, True, True)
    """
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign(salt: str, user_id: str, share: float) -> str:
    """``"treatment"`` for users whose :func:`bucket` is below ``share``, else ``"control"``.

    >>> users = [f"u{i}" for i in range(10_000)]
    >>> abs(sum(assign("s", u, 0.2) == "treatment" for u in users) / len(users) - 0.2) < 0.01  # 0.2058
    True
    >>> all(assign("s", u, 0.5) == "treatment" for u in users if assign("s", u, 0.2) == "treatment")
    True
    """
    return "treatment" if bucket(salt, user_id) < share else "control"


def rho_squared(alpha: float, tuning_users: float) -> float:
    """rho^2 of the confidence sequence, tightest at ``tuning_users`` users (eq. 161).

    >>> round(rho_squared(0.05, 5000), 6)
    0.001587
    """
    return (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning_users


def halfwidth(variance: float, n: int, alpha: float, tuning_users: float) -> float:
    """Half the width of the confidence sequence of an estimate with ``variance`` after ``n`` users (eq. 9).

    >>> round(halfwidth(0.25 / 1000, 1000, 0.05, 1000), 4)  # a mean of 1,000 coin flips
    0.048
    >>> round(1.96 * math.sqrt(0.25 / 1000), 4)  # the fixed-n interval, valid at one look only
    0.031
    """
    r2 = rho_squared(alpha, tuning_users)
    return math.sqrt(variance * n) * math.sqrt(2 * (n * r2 + 1) / (n * n * r2)
                                               * math.log(math.sqrt(n * r2 + 1) / alpha))


def always_valid_p(estimate: float, variance: float, n: int, alpha: float, tuning_users: float) -> float:
    """The always-valid p-value of ``estimate`` = 0 (eq. 155); below ``alpha`` exactly when the
    confidence sequence excludes 0.

    >>> always_valid_p(0.0, 1e-4, 100, 0.05, 1000)
    1.0
    """
    r2 = rho_squared(alpha, tuning_users)
    if variance <= 0:
        return 1.0 if estimate == 0 else 0.0
    tr2p1 = n * r2 + 1
    log_e = r2 * estimate ** 2 * n / variance / (2 * tr2p1) - 0.5 * math.log(tr2p1)
    return float(min(1.0, math.exp(-log_e))) if log_e < 700 else 0.0


def compare(control: np.ndarray, treatment: np.ndarray, alpha: float = 0.05, tuning_users: float = 5000) -> dict | None:
    """Difference and relative lift of the treatment's mean per-user outcome over the control's,
    each with its always-valid confidence sequence (module doc); None with fewer than 2 users in
    an arm. The lift keys are None while the control mean is 0."""
    c, t = np.asarray(control, dtype=np.float64), np.asarray(treatment, dtype=np.float64)
    if len(c) < 2 or len(t) < 2:
        return None
    mc, mt, vc, vt, n = c.mean(), t.mean(), c.var(ddof=1), t.var(ddof=1), len(c) + len(t)
    diff, variance = mt - mc, vt / len(t) + vc / len(c)
    width = halfwidth(variance, n, alpha, tuning_users)
    out = {"control_mean": float(mc), "treatment_mean": float(mt), "difference": float(diff),
           "lower": float(diff - width), "upper": float(diff + width),
           "p_value": always_valid_p(diff, variance, n, alpha, tuning_users),
           "lift": None, "lift_lower": None, "lift_upper": None}
    if mc > 0:
        lift = diff / mc
        lift_variance = vt / (mc ** 2 * len(t)) + vc * mt ** 2 / (mc ** 4 * len(c))
        lift_width = halfwidth(lift_variance, n, alpha, tuning_users)
        out |= {"lift": float(lift), "lift_lower": float(lift - lift_width), "lift_upper": float(lift + lift_width)}
    return out


def sample_ratio(users: Sequence[int], shares: Sequence[float]) -> dict:
    """Pearson's chi-square test of the users per arm against the arms' ``shares``.

    >>> result = sample_ratio([5030, 4970], [0.5, 0.5])
    >>> round(result["p_value"], 3), result["flagged"]
    (0.549, False)
    >>> sample_ratio([0, 0], [0.5, 0.5])["p_value"] is None
    True
    """
    observed = np.asarray(users, dtype=np.float64)
    total, expected_share = observed.sum(), np.asarray(shares, dtype=np.float64)
    if total == 0 or (expected_share <= 0).any():
        return {"chi2": None, "p_value": None, "flagged": False}
    chi2, p = stats.chisquare(observed, total * expected_share / expected_share.sum())
    return {"chi2": float(chi2), "p_value": float(p), "flagged": bool(p < SRM_P)}


def per_user(lists: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """One row per user and arm: ``lists``, ``clicked_lists``, ``ctr`` and ``conversion`` (0 or 1).

    ``lists`` has ``request_id, user_id, arm`` (answered lists only); ``events`` has
    ``request_id, type`` (attributed events). A user served in both arms (the share changed)
    counts in the arm of their first list.

    >>> lists = pd.DataFrame({"request_id": ["a", "b", "c"], "user_id": ["u1", "u1", "u2"],
    ...                       "arm": ["control", "control", "treatment"], "served_at": [1, 2, 3]})
    >>> events = pd.DataFrame({"request_id": ["a", "a", "c"], "type": ["click", "click", "purchase"]})
    >>> per_user(lists, events)[["user_id", "arm", "lists", "clicked_lists", "ctr", "conversion"]].values.tolist()
    [['u1', 'control', 2, 1, 0.5, 0.0], ['u2', 'treatment', 1, 0, 0.0, 1.0]]
    """
    columns = ["user_id", "arm", "lists", "clicked_lists", "ctr", "conversion"]
    lists = lists.dropna(subset=["user_id"])
    if lists.empty:
        return pd.DataFrame({c: [] for c in columns})
    first = lists.sort_values("served_at").drop_duplicates("user_id")[["user_id", "arm"]]
    clicked = set(events.loc[events["type"] == "click", "request_id"])
    bought = set(events.loc[events["type"] == "purchase", "request_id"])
    per_list = lists.assign(clicked=lists["request_id"].isin(clicked), bought=lists["request_id"].isin(bought))
    users = per_list.groupby("user_id").agg(lists=("request_id", "size"), clicked_lists=("clicked", "sum"),
                                            bought=("bought", "any")).reset_index()
    users = first.merge(users, on="user_id")
    users["ctr"] = users["clicked_lists"] / users["lists"]
    users["conversion"] = users["bought"].astype(np.float64)
    return users.sort_values("user_id").reset_index(drop=True)[columns]


@dataclass(frozen=True)
class GuardrailLimits:
    """How far the treatment may be from the control before a guardrail is breached, judged
    once each arm has ``min_lists`` answers.

    A breach: error rate above the control's by more than ``error_rate`` (absolute), empty-list
    rate above it by more than ``empty_rate``, or p99 latency above ``latency_ratio`` times the
    control's plus ``latency_slack_ms``.
    """

    error_rate: float = 0.01
    empty_rate: float = 0.05
    latency_ratio: float = 1.5
    latency_slack_ms: float = 50.0
    min_lists: int = 100


def guardrails(lists: pd.DataFrame, limits: GuardrailLimits = GuardrailLimits()) -> dict:
    """Per arm ``answers``, ``error_rate``, ``empty_rate``, ``p99_latency_ms``, and the breaches.

    ``lists`` has ``arm``, ``status`` (HTTP status, 200 when answered), ``n_items`` and
    ``latency_ms`` (None where not measured).

    >>> lists = pd.DataFrame({"arm": ["control"] * 100 + ["treatment"] * 100, "status": [200] * 190 + [500] * 10,
    ...                       "n_items": [20] * 200, "latency_ms": [5.0] * 200})
    >>> result = guardrails(lists)
    >>> result["arms"]["treatment"]["error_rate"], result["breaches"]
    (0.1, ['error rate 0.1000 > control 0.0000 + 0.01'])
    """
    arms: dict[str, dict] = {}
    for arm in ARMS:
        mine = lists[lists["arm"] == arm]
        answered = mine[mine["status"] < 500]
        latency = mine["latency_ms"].dropna().to_numpy(dtype=np.float64)
        arms[arm] = {"answers": int(len(mine)),
                     "error_rate": float((mine["status"] >= 500).mean()) if len(mine) else None,
                     "empty_rate": float((answered["n_items"] == 0).mean()) if len(answered) else None,
                     "p99_latency_ms": float(np.percentile(latency, 99)) if len(latency) else None}
    c, t = arms["control"], arms["treatment"]
    breaches = []
    if min(c["answers"], t["answers"]) >= limits.min_lists:
        if t["error_rate"] > c["error_rate"] + limits.error_rate:
            breaches.append(f"error rate {t['error_rate']:.4f} > control {c['error_rate']:.4f} + {limits.error_rate:g}")
        if None not in (c["empty_rate"], t["empty_rate"]) and t["empty_rate"] > c["empty_rate"] + limits.empty_rate:
            breaches.append(f"empty-list rate {t['empty_rate']:.4f} > control {c['empty_rate']:.4f} "
                            f"+ {limits.empty_rate:g}")
        if None not in (c["p99_latency_ms"], t["p99_latency_ms"]) and \
                t["p99_latency_ms"] > limits.latency_ratio * c["p99_latency_ms"] + limits.latency_slack_ms:
            breaches.append(f"p99 latency {t['p99_latency_ms']:.1f} ms > {limits.latency_ratio:g} x control "
                            f"{c['p99_latency_ms']:.1f} ms + {limits.latency_slack_ms:g} ms")
    return {"arms": arms, "breaches": breaches, "judged": min(c["answers"], t["answers"]) >= limits.min_lists}


def experiment_report(lists: pd.DataFrame, events: pd.DataFrame, share: float, alpha: float = 0.05,
                      tuning_users: float = 5000, limits: GuardrailLimits = GuardrailLimits()) -> dict:
    """Everything an experiment's status shows, from its served ``lists`` and attributed ``events``.

    ``lists``: ``request_id, user_id, arm, served_at, status, n_items, latency_ms``; ``events``:
    ``request_id, type``. ``share`` is the treatment's. The verdict is on the primary metric
    (per-user CTR): ``withheld`` on a sample-ratio mismatch, else ``treatment better`` or
    ``control better`` once the confidence sequence of the difference excludes 0, else
    ``undecided``.

    >>> rng = np.random.default_rng(0)
    >>> n = 400
    >>> arm = np.where(rng.random(n) < 0.5, "treatment", "control")
    >>> clicked = rng.random(n) < np.where(arm == "control", 0.4, 0.1)
    >>> lists = pd.DataFrame({"request_id": [f"r{i}" for i in range(n)], "user_id": [f"u{i}" for i in range(n)],
    ...     "arm": arm, "served_at": range(n), "status": 200, "n_items": 20, "latency_ms": 3.0})
    >>> events = pd.DataFrame({"request_id": lists["request_id"][clicked], "type": "click"})
    >>> report = experiment_report(lists, events, share=0.5, tuning_users=500)
    >>> report["verdict"], report["srm"]["flagged"], sum(a["users"] for a in report["arms"].values())
    ('control better', False, 400)
    """
    answered = lists[lists["status"] < 500]
    users = per_user(answered, events)
    arms = {}
    for arm in ARMS:
        mine, served = users[users["arm"] == arm], answered[answered["arm"] == arm]
        clicked = served["request_id"].isin(set(events.loc[events["type"] == "click", "request_id"]))
        arms[arm] = {"users": int(len(mine)), "lists": int(len(served)),
                     "ctr": float(clicked.mean()) if len(served) else None,
                     "user_ctr": float(mine["ctr"].mean()) if len(mine) else None,
                     "conversion": float(mine["conversion"].mean()) if len(mine) else None}
    srm = sample_ratio([arms["control"]["users"], arms["treatment"]["users"]], [1 - share, share])
    comparisons = {metric: compare(users.loc[users["arm"] == "control", metric],
                                   users.loc[users["arm"] == "treatment", metric], alpha, tuning_users)
                   for metric in METRICS}
    primary = comparisons[PRIMARY]
    if srm["flagged"]:
        verdict = "withheld"
        reason = f"sample ratio mismatch: users {arms['control']['users']}/{arms['treatment']['users']} " \
                 f"against shares {1 - share:g}/{share:g}, p = {srm['p_value']:.2g} < {SRM_P:g}"
    elif primary is None:
        verdict, reason = "undecided", "fewer than 2 users in an arm"
    elif primary["lower"] > 0:
        verdict, reason = "treatment better", _interval("per-user CTR difference", primary, alpha)
    elif primary["upper"] < 0:
        verdict, reason = "control better", _interval("per-user CTR difference", primary, alpha)
    else:
        verdict, reason = "undecided", _interval("per-user CTR difference", primary, alpha) + " holds 0"
    return {"arms": arms, "srm": srm, "comparisons": comparisons, "guardrails": guardrails(lists, limits),
            "primary": PRIMARY, "verdict": verdict, "reason": reason, "alpha": alpha, "tuning_users": tuning_users,
            "users_in_both_arms": int(answered.groupby("user_id")["arm"].nunique().gt(1).sum())}


def _interval(what: str, comparison: dict, alpha: float) -> str:
    return (f"{what} {comparison['difference']:+.4f}, {1 - alpha:.0%} confidence sequence "
            f"[{comparison['lower']:+.4f}, {comparison['upper']:+.4f}]")


def canary_decision(report: dict, margin: float, min_users: int) -> tuple[str, str]:
    """``("promote" | "roll back" | "wait", reason)`` for a canary's :func:`experiment_report`.

    Rolled back, at any time, on a sample-ratio mismatch (its evidence cannot be trusted), a
    guardrail breach, or a significant loss (the confidence sequence of the lift lies below 0).
    Promoted once each arm has ``min_users`` users and the sequence rules out a loss larger
    than ``margin`` (its lower end of the relative lift is above -margin). Else it waits.

    >>> report = {"srm": {"flagged": False}, "guardrails": {"breaches": []},
    ...           "arms": {"control": {"users": 600}, "treatment": {"users": 590}},
    ...           "comparisons": {"ctr": {"lift": 0.01, "lift_lower": -0.04, "lift_upper": 0.06}}}
    >>> canary_decision(report, margin=0.05, min_users=500)
    ('promote', 'after 590 users per arm the per-user CTR lift is 0.0100, confidence sequence [-0.0400, +0.0600]: \
no loss larger than the 5% margin')
    >>> canary_decision(report, margin=0.02, min_users=500)[0]
    'wait'
    """
    if report["srm"]["flagged"]:
        return "roll back", f"sample ratio mismatch (p = {report['srm']['p_value']:.2g}): the evidence cannot be " \
                            "trusted"
    if report["guardrails"]["breaches"]:
        return "roll back", "guardrail breached: " + "; ".join(report["guardrails"]["breaches"])
    primary = report["comparisons"].get(PRIMARY)
    if primary is None or primary["lift"] is None:
        return "wait", "no per-user CTR to compare yet (an arm has fewer than 2 users, or the control no click)"
    interval = f"per-user CTR lift is {primary['lift']:.4f}, confidence sequence " \
               f"[{primary['lift_lower']:+.4f}, {primary['lift_upper']:+.4f}]"
    if primary["lift_upper"] < 0:
        return "roll back", f"significant loss: the {interval}"
    fewest = min(report["arms"]["control"]["users"], report["arms"]["treatment"]["users"])
    if fewest < min_users:
        return "wait", f"{fewest} users in the smaller arm, {min_users} needed before promoting; the {interval}"
    if primary["lift_lower"] > -margin:
        return "promote", f"after {fewest} users per arm the {interval}: no loss larger than the {margin:.0%} margin"
    return "wait", f"the {interval}: a loss larger than the {margin:.0%} margin is not ruled out yet"


def team_draft(control: Sequence[str], treatment: Sequence[str], k: int, seed: str) -> tuple[list[str], list[str]]:
    """Team-draft interleaving of two rankings into at most ``k`` items: (items, team of each slot).

    ``seed`` (the request id) makes each list's coin flips reproducible; a team that has run out
    of items leaves the rest of the list to the other.

    >>> team_draft(["a", "b", "c"], ["b", "d", "a"], 4, "r1")
    (['b', 'a', 'c', 'd'], ['treatment', 'control', 'control', 'treatment'])
    """
    rng = random.Random(seed)
    rankings = {"control": list(control), "treatment": list(treatment)}
    picked = {"control": 0, "treatment": 0}
    items: list[str] = []
    teams: list[str] = []
    taken: set[str] = set()
    while len(items) < k:
        left = {team: [i for i in ranking if i not in taken] for team, ranking in rankings.items()}
        if not left["control"] and not left["treatment"]:
            break
        if not left["treatment"] or (left["control"] and (
                picked["control"] < picked["treatment"]
                or (picked["control"] == picked["treatment"] and rng.random() < 0.5))):
            team = "control"
        else:
            team = "treatment"
        items.append(left[team][0])
        teams.append(team)
        taken.add(left[team][0])
        picked[team] += 1
    return items, teams


def interleaving_report(lists: pd.DataFrame, events: pd.DataFrame, alpha: float = 0.05) -> dict:
    """The status of an interleaving experiment (see the module doc), from its interleaved
    ``lists`` (``request_id, user_id, items, teams``) and attributed ``events`` (``request_id,
    type, item_id, position``; the position the event gave, else the item's rank in the list).

    >>> lists = pd.DataFrame({"request_id": ["r1", "r2", "r3"], "user_id": ["u1", "u2", "u3"],
    ...     "items": [["a", "b"]] * 3, "teams": [["control", "treatment"]] * 3})
    >>> events = pd.DataFrame({"request_id": ["r1", "r1", "r2", "r3"], "type": "click",
    ...     "item_id": ["b", "b", "b", "a"], "position": [None, 2, None, 1]})
    >>> report = interleaving_report(lists, events)
    >>> report["users"], report["wins"], report["verdict"]
    (3, {'control': 1, 'treatment': 2, 'tie': 0}, 'undecided')
    """
    team_at, rank_of = {}, {}
    for request_id, items, teams in zip(lists["request_id"], lists["items"], lists["teams"]):
        for position, (item, team) in enumerate(zip(items, teams), start=1):
            team_at[(request_id, position)] = team
            rank_of.setdefault((request_id, item), position)
    user_of = dict(zip(lists["request_id"], lists["user_id"]))
    credit: dict[str, dict[str, int]] = {}
    seen = set()
    clicks = events[events["type"] == "click"] if len(events) else events
    for request_id, item, position in zip(clicks.get("request_id", []), clicks.get("item_id", []),
                                          clicks.get("position", [])):
        if request_id not in user_of:
            continue
        if position is None or (isinstance(position, float) and math.isnan(position)):
            position = rank_of.get((request_id, item))
        team = None if position is None else team_at.get((request_id, int(position)))
        if team is None or (request_id, int(position)) in seen:
            continue
        seen.add((request_id, int(position)))
        mine = credit.setdefault(user_of[request_id], {"control": 0, "treatment": 0})
        mine[team] += 1
    wins = {"control": 0, "treatment": 0, "tie": 0}
    for mine in credit.values():
        wins["tie" if mine["control"] == mine["treatment"] else max(mine, key=mine.get)] += 1
    won, lost = wins["treatment"], wins["control"]
    n = won + lost
    sign_p = float(stats.binomtest(won, n, 0.5).pvalue) if n else None
    always_valid_p = float(min(1.0, math.exp(-(special.betaln(won + 1, lost + 1) + n * math.log(2))))) if n else None
    if always_valid_p is not None and always_valid_p < alpha:
        verdict = "treatment better" if won > lost else "control better"
    else:
        verdict = "undecided"
    reason = (f"{won} users prefer the treatment, {lost} the control, {wins['tie']} tie; always-valid p = "
              f"{always_valid_p:.3g}, sign test p = {sign_p:.3g}" if n else "no user has preferred a team yet")
    return {"kind": "interleave", "users": int(lists["user_id"].nunique()), "lists": int(len(lists)),
            "clicked_users": len(credit), "wins": wins,
            "delta": (won - lost) / len(credit) if credit else None,
            "sign_test_p": sign_p, "always_valid_p": always_valid_p, "verdict": verdict, "reason": reason,
            "alpha": alpha}
