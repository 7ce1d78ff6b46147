"""Figures of a load-test run, from its CSVs only (mixdq_queue_results.csv, mixdq_queue_requests.csv and, for runs
against the HTTP service, mixdq_queue_http_split.csv).

Each function writes one PNG and returns its path, or None when the table holds nothing to plot. `tag`
(e.g. which performance model the simulated rows come from) goes into every title.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .metrics import queue_length_series  # noqa: E402

MARKERS = {"static": "o", "adaptive": "s", "slo": "^"}
LINESTYLE = {"sim": "-", "live": "--", "http": ":"}


def _color(wbits: float, all_wbits: list[float]):
    cmap = plt.get_cmap("viridis")
    return cmap(all_wbits.index(wbits) / max(len(all_wbits) - 1, 1) * 0.85)


def _rated(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["pattern"].isin(["poisson", "gamma"]) & results["lam"].notna()]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0, 1, 0.9))  # room for the (often two-line) suptitle above the panels' titles
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def _label(source: str, wbits: float, policy: str, sources: int) -> str:
    return f"W{wbits:g} {policy}" + (f" ({source})" if sources > 1 else "")


def _series(df: pd.DataFrame, suffix: str = ""):
    """(rows sorted by rate, line style) per source x bit-width x policy: one colour per bit-width,
    one marker per policy, dashed for live rows."""
    wb = sorted(df["wbits"].unique(), reverse=True)
    for (src, w, pol), g in df.groupby(["source", "wbits", "policy"]):
        yield g.sort_values("lam"), dict(marker=MARKERS.get(pol.split("+")[0], "x"), ls=LINESTYLE.get(src, "-"),
                                         color=_color(w, wb), label=_label(src, w, pol + suffix, df["source"].nunique()))


def _title_suffix(results: pd.DataFrame, tag: str = "") -> str:
    r = results.iloc[0]
    return f"{int(r.replicas)} replica(s), max batch {int(r.max_batch)}, SLO {r.slo_ms:g} ms" + (f"\n{tag}" if tag else "")


def plot_latency_vs_rate(results: pd.DataFrame, out: Path, tag: str = "") -> Path | None:
    """p95 and p99 latency vs arrival rate, one line per bit-width x policy (x source)."""
    df = _rated(results)
    if df.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for ax, metric in zip(axes, ("p95_ms", "p99_ms")):
        for g, style in _series(df):
            ax.plot(g["lam"], g[metric], **style)
        ax.set_xlabel("arrival rate λ (requests/s)")
        ax.set_ylabel(f"{metric[:3]} latency (ms)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.set_title(f"{metric[:3]} latency vs load")
    axes[1].legend(fontsize=8, ncol=2)
    fig.suptitle(f"Poisson/gamma arrivals — {_title_suffix(df, tag)}")
    return _save(fig, out / "latency_p95_p99_vs_rate.png")


def plot_slo_goodput(results: pd.DataFrame, out: Path, tag: str = "") -> Path | None:
    """SLO attainment (%) and goodput (req/s within SLO) vs arrival rate."""
    df = _rated(results)
    if df.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for g, style in _series(df):
        axes[0].plot(g["lam"], 100 * g["slo_attainment"], **style)
        axes[1].plot(g["lam"], g["goodput_rps"], **style)
    lam = np.sort(df["lam"].unique())
    axes[1].plot(lam, lam, color="gray", lw=0.8, ls=":", label="offered load")
    axes[0].set_ylabel(f"requests within SLO ({df['slo_ms'].iloc[0]:g} ms), %")
    axes[1].set_ylabel("goodput (requests/s within SLO)")
    for ax in axes:
        ax.set_xlabel("arrival rate λ (requests/s)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, ncol=2)
    fig.suptitle(f"SLO attainment and goodput — {_title_suffix(df, tag)}")
    return _save(fig, out / "slo_goodput_vs_rate.png")


def plot_delta_p95(results: pd.DataFrame, out: Path, tag: str = "") -> Path | None:
    """p95(policy) - p95(static) vs arrival rate, per bit-width (negative = the policy is faster)."""
    df = _rated(results)
    base = df["policy"].str.split("+").str[0]  # 'static+admission' compares with 'adaptive+admission'
    static = df[base == "static"]
    others = df[base != "static"]
    if static.empty or others.empty:
        return None
    key = ["source", "pattern", "mode", "lam", "burstiness"]
    m = others.merge(static[key + ["p95_ms"]], on=key, suffixes=("", "_static"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g, style in _series(m, " − static"):
        ax.plot(g["lam"], g["p95_ms"] - g["p95_ms_static"], **style)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("arrival rate λ (requests/s)")
    ax.set_ylabel("Δ p95 latency vs static (ms)")
    ax.set_yscale("symlog", linthresh=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Δp95 (policy − static); below 0 = policy faster\n{_title_suffix(df, tag)}", fontsize=10)
    return _save(fig, out / "delta_p95_vs_rate.png")


def plot_burst(results: pd.DataFrame, out: Path, tag: str = "") -> Path | None:
    """Closed-loop bursts: p95/p99 per bit-width and policy, one panel per concurrency."""
    df = results[(results["pattern"] == "burst") & results["conc"].notna()]
    if df.empty:
        return None
    concs = sorted(df["conc"].unique())
    fig, axes = plt.subplots(1, len(concs), figsize=(6 * len(concs), 4.5), squeeze=False)
    for ax, c in zip(axes[0], concs):
        g = df[df["conc"] == c]
        labels = [f"W{w:g}" for w in sorted(g["wbits"].unique(), reverse=True)]
        series = sorted(g.groupby(["source", "policy"]).groups)
        width = 0.8 / (2 * len(series))
        x = np.arange(len(labels))
        for s, (src, pol) in enumerate(series):
            gg = g[(g["source"] == src) & (g["policy"] == pol)].set_index("wbits").sort_index(ascending=False)
            for q, metric in enumerate(("p95_ms", "p99_ms")):
                off = (2 * s + q - len(series) + 0.5) * width
                label = f"{pol} {metric[:3]}" + (f" ({src})" if g["source"].nunique() > 1 else "")
                ax.bar(x + off, gg[metric].to_numpy(), width, label=label,
                       alpha=1.0 if q == 0 else 0.55, color=plt.get_cmap("tab10")(s))
        ax.set_xticks(x, labels)
        ax.set_xlabel("weight bit-width")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"burst, concurrency {int(c)} (closed loop)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(f"Closed-loop bursts — {_title_suffix(df, tag)}")
    return _save(fig, out / "burst_p95_p99.png")


SPLIT_BARS = [("encode_ms", "encode (replica)"), ("replica_other_ms", "hand-offs (replica)"),
              ("transport_ms", "transport (Ray Serve, network)")]


def plot_http_split(split: pd.DataFrame, out: Path, tag: str = "", bar_ms: float = 3.0) -> Path | None:
    """Where each HTTP run's overhead per request (latency - queue - service) went: stacked means of its parts, the p50
    overhead as a marker, and the issue's bar as a line."""
    if split.empty:
        return None
    fig, ax = plt.subplots(figsize=(3.0 + 2.2 * len(split), 4.5))
    x, bottom = np.arange(len(split)), np.zeros(len(split))
    for (col, label), color in zip(SPLIT_BARS, ("tab:orange", "tab:gray", "tab:blue")):
        v = split[f"mean_{col}"].to_numpy(float)
        ax.bar(x, v, 0.6, bottom=bottom, label=f"{label}, mean", color=color)
        bottom += v
    ax.plot(x, split["p50_overhead_ms"], "k_", markersize=28, mew=2, label="overhead p50")
    ax.axhline(bar_ms, color="tab:red", ls="--", lw=1, label=f"bar: {bar_ms:g} ms p50")
    ax.set_xticks(x, [f"{r}\n{f}, {kb / 1e3:.2f} MB" for r, f, kb in zip(split["run_id"], split["format"], split["body_kb"])],
                  fontsize=7)
    ax.set_ylabel("ms per request")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("HTTP overhead per served request (latency - queue - service)" + (f"\n{tag}" if tag else ""))
    return _save(fig, out / "http_split.png")


def plot_cdfs(results: pd.DataFrame, requests: pd.DataFrame, out: Path, tag: str = "") -> Path | None:
    """Latency CDFs per policy at the highest arrival rate, one panel per bit-width."""
    df = _rated(results)
    if df.empty or requests.empty:
        df = results
    top = df.loc[df.groupby(["source", "mode"])["lam"].idxmax()] if df["lam"].notna().any() else df
    wb = sorted(top["wbits"].unique(), reverse=True)
    fig, axes = plt.subplots(1, len(wb), figsize=(5 * len(wb), 4), squeeze=False, sharey=True)
    for ax, w in zip(axes[0], wb):
        cells = df[(df["wbits"] == w)]
        for _, t in top[top["wbits"] == w].iterrows():
            same = cells[(cells["source"] == t["source"]) & (cells["lam"] == t["lam"]) & (cells["pattern"] == t["pattern"])]
            for _, c in same.iterrows():
                mine = (requests["run_id"] == c["run_id"]) & (requests["source"] == c["source"]) & ~requests["rejected"]
                lat = requests.loc[mine, "latency_ms"]
                if lat.empty:
                    continue
                xs = np.sort(lat.to_numpy())
                ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), ls=LINESTYLE.get(c["source"], "-"),
                        label=f"{c['policy']} ({c['source']})")
        lam = top[top["wbits"] == w]["lam"].iloc[0]
        ax.set_title(f"W{w:g}" + (f", λ = {lam:.2f} req/s" if pd.notna(lam) else ""))
        ax.set_xlabel("latency (ms)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("fraction of requests")
    fig.suptitle("Latency CDF at the highest load" + (f" — {tag}" if tag else ""))
    return _save(fig, out / "latency_cdf.png")


def pick_timeseries_run(results: pd.DataFrame) -> str | None:
    """The run whose time series is most telling: the adaptive (else any) run with the longest mean queue."""
    if results.empty:
        return None
    pref = results[results["policy"].str.startswith("adaptive")]
    df = pref if not pref.empty else results
    return str(df.loc[df["mean_queue_len"].idxmax(), "run_id"])


def plot_timeseries(requests: pd.DataFrame, run_id: str, out: Path, tag: str = "", source: str | None = None) -> Path | None:
    """Queue length and the resolution chosen for each request over time, for one run."""
    r = requests[requests["run_id"] == run_id]
    if source is not None:
        r = r[r["source"] == source]
    elif r["source"].nunique() > 1:
        r = r[r["source"] == "live"]
    if r.empty:
        return None
    q = queue_length_series(r)
    served = r[~r["rejected"]]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    a1.step(q["time_s"], q["queue_len"], where="post", lw=0.8)
    a1.set_ylabel("requests waiting")
    a1.grid(alpha=0.3)
    if served["wbits"].nunique() > 1:
        fig.colorbar(a2.scatter(served["arrival_s"], served["res"], c=served["wbits"], s=6, cmap="viridis"),
                     ax=a2, label="weight bits")
    else:
        a2.scatter(served["arrival_s"], served["res"], s=6, label=f"W{served['wbits'].iloc[0]:g}" if len(served) else None)
    if r["rejected"].any():
        rej = r[r["rejected"]]
        a2.scatter(rej["arrival_s"], np.zeros(len(rej)), marker="x", color="red", s=10, label="rejected")
    if a2.get_legend_handles_labels()[0]:
        a2.legend(fontsize=8)
    a2.set_ylabel("served resolution (px)")
    a2.set_xlabel("time since first arrival (s)")
    a2.grid(alpha=0.3)
    fig.suptitle(f"{run_id} ({r['source'].iloc[0]}): queue length and chosen resolution" + (f"\n{tag}" if tag else ""))
    return _save(fig, out / f"timeseries_{run_id}.png")


def plot_scaleout(scaleout: pd.DataFrame, out: Path, tag: str = "") -> list[Path]:
    """From capacity.scaleout_table: HTTP p95 (and simulated, dashed) vs load per replica count, and goodput vs
    replica count against perfect scaling of the one-replica goodput, one line per mode x load."""
    df = scaleout[scaleout["load"].notna()]
    if df.empty:
        return []
    paths = []
    modes = sorted(df["mode"].unique())
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for n, g in df[df["mode"] == mode].groupby("replicas"):
            g = g.sort_values("load")
            line, = ax.plot(g["load"], g["p95_ms"], marker="o", label=f"{n} replica(s), HTTP")
            ax.plot(g["load"], g["sim_p95_ms"], ls="--", color=line.get_color(), label=f"{n} replica(s), simulated")
        ax.set(xlabel="load (fraction of N x one-replica capacity)", ylabel="p95 latency (ms)", title=mode)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("p95 vs load per replica count" + (f"\n{tag}" if tag else ""))
    paths.append(_save(fig, out / "scaleout_p95_vs_load.png"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (mode, load), g in df.groupby(["mode", "load"]):
        g = g.sort_values("replicas")
        line, = ax.plot(g["replicas"], g["goodput_rps"], marker="o", label=f"{mode} load {load:g}")
        ax.plot(g["replicas"], g["replicas"] * g["goodput_1_rps"], ls=":", color=line.get_color())
    ax.set(xlabel="replicas (GPUs)", ylabel="goodput (requests/s within the SLO)", xticks=sorted(df["replicas"].unique()))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("goodput vs replicas (dotted: N x one replica)" + (f"\n{tag}" if tag else ""), fontsize=10)
    paths.append(_save(fig, out / "scaleout_goodput_vs_replicas.png"))
    return paths
