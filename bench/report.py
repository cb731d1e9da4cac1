#!/usr/bin/env python3
"""Turns the fio JSON files of one bench/run.sh run into one results JSON and
a table of ratios to the raw legs (see bench/METHOD.md)."""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone

TARGETS = ["raw", "mdfuse_bitmap", "baseline_bitmap", "mdfuse_bitmap_uring", "mdfuse_nobitmap", "qemu_quorum",
           "mdfuse_remote"]
WORKLOADS = [
    "seqwrite_direct", "seqread_direct", "randwrite_direct", "randread_direct", "randrw_direct",
    "seqwrite_buffered", "seqread_buffered", "randwrite_buffered", "randread_buffered",
    "randrw_buffered",
]
MIB = 1 << 20


def load_fio(path):
    with open(path) as f:
        text = f.read()
    # fio may print warnings before the JSON.
    return json.loads(text[text.index("{"):])


def per_section(fio):
    """Sums each job section's clones (numjobs): {jobname: {iops, mibs}}."""
    out = {}
    for job in fio["jobs"]:
        s = out.setdefault(job["jobname"], {"iops": 0.0, "mibs": 0.0})
        for d in ("read", "write"):
            s["iops"] += job[d]["iops"]
            s["mibs"] += job[d]["bw_bytes"] / MIB
    return out


def figure(fio, workload):
    """The per-leg figure: sequential in MiB/s, random in IOPS (reads plus
    writes for the mix). Several sections = the raw legs written at once:
    their mean is what each leg delivers."""
    sections = per_section(fio)
    key = "mibs" if workload.startswith("seq") or workload == "fill" else "iops"
    values = [s[key] for s in sections.values()]
    return sum(values) / len(values), key


def lat_us(fio):
    """Mean completion latency of the first section, in microseconds."""
    job = fio["jobs"][0]
    d = "write" if job["write"]["io_bytes"] else "read"
    return job[d]["clat_ns"]["mean"] / 1000


def cpu_per_request(out, t, w, fio):
    """The daemon's context switches and CPU microseconds per request
    during a workload (bench/run.sh's cpu_snapshot before and after)."""
    try:
        v0, n0, t0, hz = (int(x) for x in open(os.path.join(out, f"{t}.{w}.cpu0")).read().split())
        v1, n1, t1, _ = (int(x) for x in open(os.path.join(out, f"{t}.{w}.cpu1")).read().split())
    except (OSError, ValueError):
        return None
    reqs = sum(job[d]["total_ios"] for job in fio["jobs"] for d in ("read", "write"))
    if not reqs:
        return None
    return {"daemon_ctxsw_per_req": round((v1 - v0 + n1 - n0) / reqs, 2),
            "daemon_cpu_us_per_req": round((t1 - t0) * 1e6 / hz / reqs, 1)}


def mem_kib(path):
    m = {}
    with open(path) as f:
        for line in f:
            k, v = line.split(":")
            m[k.strip()] = int(v.split()[0])
    return m


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("result")
    for opt in ("runtime", "io-size", "leg-size", "threads", "work", "fstype", "qemu-aio",
                "mdfuse-rev", "baseline", "baseline-rev"):
        ap.add_argument("--" + opt)
    a = ap.parse_args()

    figures = {}
    for t in TARGETS:
        figures[t] = {}
        for w in ["fill"] + WORKLOADS:
            p = os.path.join(a.out, f"{t}.{w}.json")
            if not os.path.exists(p):
                continue
            fio = load_fio(p)
            value, unit = figure(fio, w)
            figures[t][w] = {"value": round(value, 1), "unit": "MiB/s" if unit == "mibs" else "IOPS",
                             "clat_mean_us": round(lat_us(fio), 1)}
            per_req = cpu_per_request(a.out, t, w, fio)
            if per_req:
                figures[t][w].update(per_req)

    ratios = {}
    for t in TARGETS[1:]:
        if not figures[t]:
            continue
        ratios[t] = {}
        for w, f in figures[t].items():
            raw = figures["raw"].get(w, {}).get("value")
            if raw:
                ratios[t][w] = round(f["value"] / raw, 3)

    def r(t, w):
        return ratios.get(t, {}).get(w)

    def vs(a_t, b_t, w):
        a_v = figures[a_t].get(w, {}).get("value")
        b_v = figures[b_t].get(w, {}).get("value")
        return round(a_v / b_v, 3) if a_v and b_v else None

    bitmap_cost = {w: vs("mdfuse_bitmap", "mdfuse_nobitmap", w)
                   for w in ("randwrite_direct", "randrw_direct", "randwrite_buffered",
                             "seqwrite_direct")}
    vs_qemu = {w: vs("mdfuse_bitmap", "qemu_quorum", w) for w in WORKLOADS}
    uring_vs_dev_fuse = {w: vs("mdfuse_bitmap_uring", "mdfuse_bitmap", w) for w in WORKLOADS}
    uring_vs_qemu = {w: vs("mdfuse_bitmap_uring", "qemu_quorum", w) for w in WORKLOADS}
    # A/B: this build against another binary (BASELINE=), same run, same legs' disk.
    vs_baseline = {w: vs("mdfuse_bitmap", "baseline_bitmap", w) for w in ["fill"] + WORKLOADS}

    big = {}
    bm = os.path.join(a.out, "big.mount")
    if os.path.exists(bm):
        t0, t1, threads = open(bm).read().split()
        big = {
            "array": "1 TiB sparse, 2 legs, bitmap on loop-backed ext4",
            "mount_seconds": round(float(t1) - float(t0), 3),
            "threads": int(threads),
            "mem_after_mount_kib": mem_kib(os.path.join(a.out, "big.mem.idle")),
            "mem_after_io_kib": mem_kib(os.path.join(a.out, "big.mem.io")),
        }
        bf = os.path.join(a.out, "big.fio.json")
        if os.path.exists(bf):
            big["randrw_4k_iops_over_1tib"] = round(figure(load_fio(bf), "randrw")[0], 1)

    checks = []

    def check(name, value, op, limit):
        ok = None if value is None else (value >= limit if op == ">=" else value <= limit)
        checks.append({"target": name, "value": value, "limit": f"{op} {limit}", "holds": ok})

    for w in ("seqwrite_direct", "seqread_direct"):
        check(f"{w} vs raw (bitmap on)", r("mdfuse_bitmap", w), ">=", 0.90)
    for w in ("randwrite_direct", "randread_direct", "randrw_direct"):
        check(f"{w} vs raw (bitmap on)", r("mdfuse_bitmap", w), ">=", 0.75)
        check(f"{w} vs qemu quorum", vs_qemu[w], ">=", 1.5)
    for w in ("seqwrite_buffered", "randwrite_buffered"):
        check(f"{w} (+fsync) vs raw (bitmap on)", r("mdfuse_bitmap", w), ">=", 0.80)
    check("bitmap on/off, 4k random writes over the array", bitmap_cost["randwrite_direct"], ">=", 0.90)
    if figures.get("mdfuse_bitmap_uring"):
        # Issue 16's targets, on the FUSE-over-io_uring transport.
        for w in ("seqwrite_direct", "seqread_direct", "randwrite_direct", "randread_direct",
                  "randrw_direct", "seqwrite_buffered"):
            check(f"uring: {w} vs raw (bitmap on)", r("mdfuse_bitmap_uring", w), ">=", 0.90)
        for w in ("randwrite_direct", "randread_direct", "randrw_direct"):
            check(f"uring: {w} vs qemu quorum", uring_vs_qemu[w], ">=", 2.0)
    if big:
        check("1 TiB mount seconds", big["mount_seconds"], "<=", 1.0)
        check("1 TiB resident MiB after I/O", round(big["mem_after_io_kib"]["VmRSS"] / 1024, 1),
              "<=", 100)
    recovery = None
    try:
        t_readd, t_full, t_raw, nbytes = open(os.path.join(a.out, "recovery.times")).read().split()
        t_readd, t_full, t_raw = float(t_readd), float(t_full), float(t_raw)
        recovery = {"readd_1pct_s": round(t_readd, 3), "full_recovery_s": round(t_full, 3),
                    "raw_copy_s": round(t_raw, 3), "bytes": int(nbytes)}
        check("re-add, 1% of chunks dirty, vs full recovery (time)", round(t_readd / t_full, 4), "<=", 0.03)
        check("full recovery vs raw leg-to-leg copy (speed)", round(t_raw / t_full, 3), ">=", 0.80)
    except (OSError, ValueError, ZeroDivisionError) as e:
        checks.append({"target": "recovery", "value": None, "holds": None, "note": f"not measured: {e}"})

    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "kernel": platform.release(), "cpus": os.cpu_count(), "cpu": cpu,
            "mem_total_kib": mem_kib("/proc/meminfo").get("MemTotal") if os.path.exists("/proc/meminfo") else None,
            "work_dir": a.work, "work_fs": a.fstype,
            "fio": sh("fio", "--version"),
            "qemu": sh("qemu-storage-daemon", "--version").splitlines()[0] if sh("qemu-storage-daemon", "--version") else "",
        },
        "setup": {"runtime_s": int(a.runtime), "io_size": a.io_size, "leg_size": a.leg_size,
                  "mdfuse_threads": int(a.threads), "mdfuse_rev": a.mdfuse_rev,
                  "qemu_aio": a.qemu_aio},
        **({"baseline": {"binary": a.baseline, "rev": a.baseline_rev}} if a.baseline else {}),
        "figures": figures,
        "ratios_to_raw": ratios,
        "mdfuse_bitmap_vs_qemu": vs_qemu,
        "uring_vs_dev_fuse": uring_vs_dev_fuse,
        **({"mdfuse_bitmap_vs_baseline": vs_baseline} if figures.get("baseline_bitmap") else {}),
        "bitmap_on_vs_off": bitmap_cost,
        "startup_memory_1tib": big,
        "recovery": recovery,
        "targets": checks,
    }
    with open(a.result, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")

    # The table.
    cols = [c for c in TARGETS[1:] if figures[c]]
    print(f"\n{'workload':<20}{'raw':>12}  " + "".join(f"{c:>16}" for c in cols) + f"{'md/qemu':>9}")
    for w in ["fill"] + WORKLOADS:
        raw = figures["raw"].get(w)
        if not raw:
            continue
        line = f"{w:<20}{raw['value']:>8.0f} {('MB/s' if raw['unit'] == 'MiB/s' else 'IOPS'):<4} "
        for c in cols:
            v = r(c, w)
            line += f"{'-' if v is None else f'{v:.2f}':>16}"
        q = vs_qemu.get(w)
        line += f"{'-' if q is None else f'{q:.2f}':>9}"
        print(line)
    print("\n(ratios to raw from this run; seq in MiB/s, random in IOPS; md/qemu = mdfuse bitmap-on / qemu)")
    print(f"bitmap on/off: {bitmap_cost}")
    if figures.get("baseline_bitmap"):
        print(f"this build / baseline {a.baseline_rev or a.baseline} (bitmap on, /dev/fuse): {vs_baseline}")
    if figures.get("mdfuse_bitmap_uring"):
        print(f"uring / dev-fuse (bitmap on): {uring_vs_dev_fuse}")
        for t in ("mdfuse_bitmap", "mdfuse_bitmap_uring"):
            per = {w: (f.get("daemon_ctxsw_per_req"), f.get("daemon_cpu_us_per_req"))
                   for w, f in figures[t].items() if "daemon_ctxsw_per_req" in f}
            print(f"{t}: (daemon context switches, CPU us) per request: {per}")
    if big:
        print(f"1 TiB: mount {big['mount_seconds']} s, VmRSS {big['mem_after_io_kib']['VmRSS']} KiB, "
              f"VmHWM {big['mem_after_io_kib']['VmHWM']} KiB after I/O, {big['threads']} threads")
    print("\ntargets (issue 6):")
    for c in checks:
        h = {True: "holds", False: "MISSED", None: "n/a"}[c["holds"]]
        print(f"  {h:<7} {c['target']}: {c['value']} (want {c['limit']}){' - ' + c['note'] if 'note' in c else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
