// What the browser tests of tests/widget (run.mjs, failover.mjs, and trades-bars.mjs for run.mjs)
// share: failing, logging and counting checks, bounded polls, free ports, playwright-core and
// Chromium (installed by tests/widget/ensure-browser.sh when missing), a gateway process of the
// binary under test, and stopping everything a run started, on failure too.
//
// A script sets its step timeout (waitFor's default) with configure() before its first check; the
// counter of ok() is per process, as each script is.

import { spawn, spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { startOverlay } from "./overlay.mjs";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const POLL_MS = 100;

const settings = { stepTimeoutMs: 15_000 };

/** Sets waitFor's default deadline (`stepTimeoutMs`). */
export function configure({ stepTimeoutMs }) {
  if (stepTimeoutMs !== undefined) settings.stepTimeoutMs = stepTimeoutMs;
}

export class TestFailure extends Error {}

export function fail(message) {
  throw new TestFailure(message);
}

export function log(line) {
  process.stdout.write(`${line}\n`);
}

let passed = 0;
export function ok(what) {
  passed++;
  log(`ok ${passed} - ${what}`);
}

/** How many checks ok() has counted. */
export function passedCount() {
  return passed;
}

/** What a FAIL line says about `e`: the message of a TestFailure, else the stack. */
export function describeError(e) {
  return e instanceof TestFailure ? e.message : e && e.stack ? e.stack : e;
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Polls `probe` until it returns a truthy value ({ ok: false } is falsy); fails with `what` (and
 * the last value's `detail`) at the deadline.
 */
export async function waitFor(what, probe, timeoutMs = settings.stepTimeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (last && last.ok !== false) return last;
    if (Date.now() > deadline) {
      const detail = last && last.detail !== undefined ? `; last seen: ${JSON.stringify(last.detail)}` : "";
      fail(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
    }
    await sleep(POLL_MS);
  }
}

/** Exact comparison of decimal strings, written independently of the widget's comparator. */
export function decimalCmp(a, b) {
  const split = (s) => {
    const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(s);
    if (!m) fail(`not a decimal string: ${JSON.stringify(s)}`);
    return { neg: m[1] === "-", int: m[2], frac: m[3] || "" };
  };
  const x = split(a);
  const y = split(b);
  const scale = Math.max(x.frac.length, y.frac.length);
  const big = (d) => (d.neg ? -1n : 1n) * BigInt(d.int + d.frac.padEnd(scale, "0"));
  const bx = big(x);
  const by = big(y);
  return bx < by ? -1 : bx > by ? 1 : 0;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** QUOTEGW_BIN, else target/release/quotegw or target/debug/quotegw (whichever exists). */
export function resolveBin() {
  const candidates = [process.env.QUOTEGW_BIN, "target/release/quotegw", "target/debug/quotegw"].filter(Boolean);
  const bin = candidates.map((c) => path.resolve(ROOT, c)).find((c) => fs.existsSync(c));
  if (!bin) fail(`no gateway binary: set QUOTEGW_BIN (tried ${candidates.join(", ")})`);
  return bin;
}

/** Installs what is missing (tests/widget/ensure-browser.sh), then loads playwright-core from where it put it. */
export function loadPlaywright() {
  const ensure = path.join(ROOT, "tests/widget/ensure-browser.sh");
  const r = spawnSync("bash", [ensure], { stdio: ["ignore", "pipe", "inherit"], encoding: "utf8", timeout: 900_000 });
  if (r.status !== 0) fail(`${ensure} failed (exit ${r.status}${r.signal ? `, ${r.signal}` : ""})`);
  const nodeDir = r.stdout.trim().split("\n").pop();
  const require = createRequire(path.join(nodeDir, "package.json"));
  return require("playwright-core");
}

/** Debian's Chromium, headless, with a profile in `userDataDir`; `options` adds to (or overrides) the launch options. */
export function launchChromium(chromium, userDataDir, options = {}) {
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    timeout: 30_000,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    ...options,
  });
}

/** SIGKILLs the process group of `proc` (spawned detached); nothing when it is gone. */
export function killGroup(proc) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  try {
    process.kill(-proc.pid, "SIGKILL");
  } catch {
    // already gone
  }
}

/**
 * A gateway process of `bin` in its own process group, listening on 127.0.0.1:`port`, its output
 * lines kept (the last `keepLines`) for failures. Options: `readyTimeoutMs` (startReady's deadline
 * per attempt), `startAttempts` (starts that exit before ready, e.g. a port still held, are retried
 * this many times in all). A subclass sees every output line in onLine(line).
 */
export class Gateway {
  constructor(bin, config, port, name = "gateway", { readyTimeoutMs = 20_000, startAttempts = 1, keepLines = 200 } = {}) {
    this.bin = bin;
    this.config = config;
    this.port = port;
    this.name = name;
    this.readyTimeoutMs = readyTimeoutMs;
    this.startAttempts = startAttempts;
    this.keepLines = keepLines;
    this.proc = null;
    this.output = [];
    // With an overlay (QUOTEGW_WEB_OVERLAY): the gateway listens here, behind tests/widget/overlay.mjs on `port`.
    this.upstreamPort = null;
    this.overlay = null;
  }

  get base() {
    return `http://127.0.0.1:${this.port}`;
  }

  get ws() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Puts the overlay proxy (`files`: route -> body, from disk) on `port`; call while the gateway is stopped. */
  async enableOverlay(files) {
    this.upstreamPort = await freePort();
    this.overlay = await startOverlay(this.port, this.upstreamPort, files);
  }

  /** Called with every output line (all of them, not only the kept tail). */
  onLine(_line) {}

  start() {
    // Its own process group, so that stopping it also stops anything it started.
    const listen = `127.0.0.1:${this.upstreamPort ?? this.port}`;
    const proc = spawn(this.bin, ["--config", this.config, "--listen", listen], {
      detached: true,
      cwd: ROOT, // a config's relative paths (a replay file) are relative to the repository root
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.proc = proc;
    proc.exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve({ code, signal })));
    proc.on("error", (e) => this.output.push(`spawn error: ${e.message}`));
    for (const stream of [proc.stdout, proc.stderr]) {
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        for (const line of chunk.split("\n")) {
          if (!line) continue;
          this.output.push(line);
          this.onLine(line);
        }
        if (this.output.length > this.keepLines) this.output.splice(0, this.output.length - this.keepLines);
      });
    }
  }

  /** Starts it and waits for GET /readyz = 200; a start that exits first (fails to bind) is retried up to startAttempts in all. */
  async startReady() {
    for (let attempt = 1; ; attempt++) {
      this.start();
      const proc = this.proc;
      let exited = null;
      proc.exited.then((e) => (exited = e));
      const deadline = Date.now() + this.readyTimeoutMs;
      while (Date.now() < deadline && !exited) {
        try {
          const res = await fetch(`${this.base}/readyz`, { signal: AbortSignal.timeout(1000) });
          if (res.status === 200) return;
        } catch {
          // not listening yet
        }
        await sleep(POLL_MS);
      }
      if (!exited) fail(`${this.name} not ready (GET /readyz != 200) within ${this.readyTimeoutMs} ms`);
      if (attempt >= this.startAttempts) {
        fail(`${this.name} exited during start-up (${JSON.stringify(exited)})${this.startAttempts > 1 ? ` ${attempt} times` : ""}`);
      }
      await sleep(500);
    }
  }

  /** Stops the gateway's process group and waits (bounded) for it to be gone. */
  async stop(signal = "SIGKILL") {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    try {
      process.kill(-proc.pid, signal);
    } catch {
      try {
        proc.kill(signal);
      } catch {
        // already gone
      }
    }
    await Promise.race([proc.exited, sleep(5000)]);
  }

  /** For the watchdog: no awaiting. */
  stopNow() {
    killGroup(this.proc);
  }

  tail(n = 40) {
    return this.output.slice(-n).map((l) => `${this.name}: ${l}`).join("\n");
  }

  /** Its last `n` output lines under a heading, for a failure report. */
  report(n) {
    return `${this.name} output (last lines):\n${this.tail(n)}`;
  }
}

/**
 * Stops what a run started, on failure too, bounded (10 s): the browser `context`, the `gateways`
 * (SIGKILL) and their overlays, and `servers` (anything with close()); then SIGKILLs any gateway
 * still there.
 */
export async function stopAll({ context, gateways = [], servers = [] }) {
  const jobs = [];
  if (context) jobs.push(context.close().catch(() => {}));
  for (const g of gateways) jobs.push(g.stop("SIGKILL"));
  for (const s of servers) if (s) jobs.push(s.close());
  for (const g of gateways) if (g.overlay) jobs.push(g.overlay.close());
  await Promise.race([Promise.all(jobs), sleep(10_000)]);
  for (const g of gateways) g.stopNow();
}

export function removeDirs(dirs) {
  for (const dir of dirs) if (dir) fs.rmSync(dir, { recursive: true, force: true });
}

/**
 * The overall deadline of a run: past `timeoutMs` it says so (FAIL: the `what` test did not
 * finish ...), SIGKILLs `gateways` and prints their last `tailLines` lines, calls `onTimeout`,
 * and exits 1. SIGINT and SIGTERM SIGKILL the gateways, call `onSignal` and exit 1. Returns the
 * timer (clearTimeout it at the end). Playwright kills the browser it launched when this process
 * exits.
 */
export function startWatchdog({ what, timeoutMs, gateways, tailLines, onTimeout = () => {}, onSignal = () => {} }) {
  const timer = setTimeout(() => {
    log(`FAIL: the ${what} test did not finish within ${timeoutMs / 1000} s`);
    for (const g of gateways) {
      g.stopNow();
      log(g.report(tailLines));
    }
    onTimeout();
    process.exit(1);
  }, timeoutMs);
  for (const sig of ["SIGINT", "SIGTERM"]) {
    process.on(sig, () => {
      for (const g of gateways) g.stopNow();
      onSignal();
      process.exit(1);
    });
  }
  return timer;
}
