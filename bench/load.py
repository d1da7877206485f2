"""Load toward many machines: N worker processes on one study, against PostgreSQL directly
and through Optuna's gRPC storage proxy (``sweep-proxy``), side by side in one run.

Every trial is a real sweep job: Hydra composes and launches it, the sweeper asks Optuna for
it (its no-repeat proposal, the ``n_trials`` quota), the job is the Optuna trial (heartbeat,
``report``/``should_prune`` at each evaluation point, its tell) and records an MLflow child
run on a real ``mlflow server`` (PostgreSQL backend, served artifacts, basic-auth). Only the
training is replaced, by the zero-cost trial runner
(``runner._target_=sweep.testing.zero_cost.run``, ``src/sweep/testing/zero_cost.py``). The N processes are the recipe in docs/many-machines.md:
``--machines`` commands started at once (as on that many machines), each with
``hydra.sweeper.n_workers`` processes; the default search (TPE, the ``lora`` space).

Printed per case: trials per second (from the first trial's start to the last one's end, and
over the whole wall time with start-up), ask latency (``study.ask()`` alone and the whole
proposal, median and p99, from each trial's ``proposal_seconds``), duplicates, lost trials,
runs left RUNNING, MLflow parent runs, database connections (peak, from
``pg_stat_activity``), and the CPU the workers used.

    python -m bench.load [--workers 8,32,64] [--trials-per-worker 3] [--machines 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from servers import free_port, mlflow_server, pg_bindir, postgres_cluster  # noqa: E402

BIN = Path(sys.executable).parent
PROXIES: List[subprocess.Popen] = []  # stopped at the end, whatever happens


def split(n: int, parts: int) -> List[int]:
    """``n`` workers over ``parts`` commands, as evenly as they go."""
    parts = max(1, min(parts, n))
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def percentile(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Connections(threading.Thread):
    """Peak connections per database, sampled from pg_stat_activity every 0.2 s."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        import sqlalchemy

        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        self.peak: Dict[str, int] = {}
        self.stop = threading.Event()
        self.error: Optional[BaseException] = None
        self.available = self.least_available = available_memory()

    def run(self) -> None:
        import sqlalchemy

        query = sqlalchemy.text("SELECT datname, count(*) FROM pg_stat_activity "
                                "WHERE datname IS NOT NULL AND pid <> pg_backend_pid() "
                                "GROUP BY datname")
        try:
            with self.engine.connect() as connection:
                while not self.stop.wait(0.2):
                    for name, count in connection.execute(query).all():
                        self.peak[name] = max(self.peak.get(name, 0), int(count))
                    connection.commit()
                    self.least_available = min(self.least_available, available_memory())
        except BaseException as error:  # noqa: BLE001  (raised again by finish)
            self.error = error

    def finish(self) -> Dict[str, int]:
        self.stop.set()
        self.join(timeout=5)
        self.engine.dispose()
        if self.error is not None:
            raise RuntimeError(f"sampling pg_stat_activity failed: {self.error}")
        return self.peak


def available_memory() -> float:
    """MemAvailable, in GB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def wait_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sweep-proxy exited {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"sweep-proxy did not listen in {timeout:.0f} s")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants, exited ones included (a reaped
    child's time is in its parent's cutime/cstime)."""
    children: Dict[int, List[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            f = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
        todo.extend(children.get(current, []))
    return total


def postmaster_pid(pg) -> int:
    return int((pg.folder / "data" / "postmaster.pid").read_text().split()[0])


def run_case(pg, server, mode: str, n: int, args, root: Path) -> Dict[str, Any]:
    import optuna

    from hydra_plugins.sweep_optuna._proposals import PROPOSAL_ATTR, config_key
    from sweep.study.trials import TAKEN, ran

    database = f"optuna_{mode}_{n}"
    subprocess.run([str(pg_bindir() / "createdb"), "-h", "127.0.0.1", "-p", str(pg.port),
                    "-U", pg.user, database], check=True, env={**os.environ, **pg.env},
                   capture_output=True)
    url = pg.url(database)
    folder = root / f"{mode}-{n}"
    folder.mkdir()
    proxy: Optional[subprocess.Popen] = None
    storage = url
    env = {**os.environ, **server.env}
    env.pop("PGPASSWORD", None)
    if mode == "direct":
        env.update(pg.env)
    else:  # the workers get no database password: only the proxy reaches the database
        port = free_port()
        log = folder / "proxy.log"
        with log.open("w") as out:
            proxy = subprocess.Popen(
                [str(BIN / "sweep-proxy"), f"hydra.sweeper.storage={url}", f"proxy.port={port}",
                 f"proxy.threads={args.proxy_threads}"], env={**os.environ, **pg.env},
                stdout=out, stderr=subprocess.STDOUT)
        PROXIES.append(proxy)
        wait_port(port, proxy, log)
        storage = f"grpc://127.0.0.1:{port}"
    n_trials = n * args.trials_per_worker
    name = f"load-{mode}-{n}"
    watch = Connections(pg.url("postgres"))
    watch.start()
    commands = []
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    servers_before = (tree_cpu(postmaster_pid(pg)), tree_cpu(server.process.pid))
    started = time.time()
    for i, workers in enumerate(split(n, args.machines)):
        command = [str(BIN / "sweep"), "-m", "model=tiny", f"hydra.sweeper.storage={storage}",
                   f"hydra.sweeper.study_name={name}", f"hydra.sweeper.n_trials={n_trials}",
                   f"hydra.sweeper.n_workers={workers}", f"mlflow.tracking_uri={server.url}",
                   f"mlflow.experiment={name}", "eval.after_sweep=false",
                   "registry.after_sweep=false", f"hydra.sweep.dir={folder}/machine-{i}",
                   "runner._target_=sweep.testing.zero_cost.run"]
        out = (folder / f"machine-{i}.log").open("w")
        commands.append((subprocess.Popen(command, env=env, stdout=out,
                                          stderr=subprocess.STDOUT, cwd=folder,
                                          start_new_session=True), out))
    codes = []
    try:
        deadline = time.monotonic() + args.timeout
        for process, out in commands:
            try:
                codes.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                codes.append(process.wait())
    finally:  # stopped (SIGTERM, Ctrl-C): no worker left behind
        for process, out in commands:
            try:  # the command and the worker processes it started
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
            out.close()
    wall = time.time() - started
    servers_after = (tree_cpu(postmaster_pid(pg)), tree_cpu(server.process.pid))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    peaks = watch.finish()
    proxy_cpu = float("nan")
    if proxy is not None:
        proxy_cpu = tree_cpu(proxy.pid)
        proxy.terminate()
        proxy.wait(timeout=30)

    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    launched = [t for t in trials if ran(t)]
    finished = [t for t in launched if t.state.is_finished() and t.state.name != "FAIL"]
    failed = [t for t in launched if t.state.name == "FAIL"]
    running = [t for t in trials if t.state.name == "RUNNING"]
    keys = [config_key(t.params) for t in launched if t.state in TAKEN]
    numbers = [t.number for t in trials]
    asks = [t.user_attrs[PROPOSAL_ATTR]["ask"] for t in launched if PROPOSAL_ATTR in t.user_attrs]
    totals = [t.user_attrs[PROPOSAL_ATTR]["total"] for t in launched
              if PROPOSAL_ATTR in t.user_attrs]
    first = min(t.datetime_start for t in launched)
    last = max(t.datetime_complete for t in launched if t.datetime_complete)
    span = (last - first).total_seconds()

    from mlflow.tracking import MlflowClient

    os.environ.update(server.env)
    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    open_runs = [r for r in runs if r.info.status == "RUNNING"]
    for t in failed[:5]:
        print(f"  trial {t.number} FAIL: {t.user_attrs.get('fail_reason', '?')[:300]}")
    for r in open_runs[:5]:
        print(f"  MLflow run {r.info.run_name} ({r.info.run_id}) left RUNNING")
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    return {
        "mode": mode, "workers": n, "commands": len(commands), "exit codes": sorted(set(codes)),
        "n_trials": n_trials, "finished": len(finished), "failed": len(failed),
        "not run": len(trials) - len(launched),
        "trials/s": len(finished) / span if span > 0 else float("nan"),
        "trials/s (wall)": len(finished) / wall, "wall s": wall,
        "ask median ms": 1000 * statistics.median(asks) if asks else float("nan"),
        "ask p99 ms": 1000 * percentile(asks, 0.99),
        "proposal median ms": 1000 * statistics.median(totals) if totals else float("nan"),
        "proposal p99 ms": 1000 * percentile(totals, 0.99),
        "duplicates": (len(keys) - len(set(keys))) + (len(numbers) - len(set(numbers))),
        "lost": max(0, n_trials - len(finished)) + len(running),
        "left RUNNING": len(running), "parent runs": len(parents),
        "child runs": len(children), "MLflow runs RUNNING": len(open_runs),
        "db connections (peak)": peaks.get(database, 0),
        "mlflow db connections (peak)": peaks.get("mlflow", 0),
        "worker CPU s": cpu, "proxy CPU s": proxy_cpu,
        "PostgreSQL CPU s": servers_after[0] - servers_before[0],
        "MLflow server CPU s": servers_after[1] - servers_before[1],
        "memory used GB (peak)": watch.available - watch.least_available,
    }


def show(rows: List[Dict[str, Any]]) -> None:
    keys = list(rows[0])
    width = max(len(k) for k in keys)
    heads = [f"{r['mode']} x{r['workers']}" for r in rows]
    print(" " * width + "  " + "  ".join(f"{h:>12}" for h in heads))
    for k in keys[2:]:
        cells = []
        for r in rows:
            v = r[k]
            cells.append(f"{v:12.3g}" if isinstance(v, float) else f"{str(v):>12}")
        print(f"{k:<{width}}  " + "  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="8,32,64", help="worker processes per case")
    parser.add_argument("--modes", default="direct,proxy")
    parser.add_argument("--trials-per-worker", type=int, default=3)
    parser.add_argument("--machines", type=int, default=4,
                        help="commands started at once, as on that many machines")
    parser.add_argument("--proxy-threads", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the servers' cleanup runs
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.platform()}; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sweep-load-") as tmp:
        root = Path(tmp)
        with postgres_cluster(root, databases=("mlflow", "mlflow_auth")) as pg, \
                mlflow_server(root, pg) as server:
            os.environ.update(pg.env)  # this process reads pg_stat_activity and the studies
            try:
                for n in [int(w) for w in args.workers.split(",")]:
                    for mode in args.modes.split(","):
                        print(f"... {mode}, {n} workers", flush=True)
                        rows.append(run_case(pg, server, mode, n, args, root))
                        show(rows[-1:])
                        print(flush=True)
            finally:
                for proxy in PROXIES:
                    if proxy.poll() is None:
                        proxy.kill()
    print("all cases:")
    show(rows)


if __name__ == "__main__":
    main()
