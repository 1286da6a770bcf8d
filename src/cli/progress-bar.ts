// The progress bar of `faultline lazy-pages` on a terminal: lazy pages in place of the total, the
// rate and the time left, while the restore fills. Only when stderr is a TTY (and the daemon did not
// detach): logs, pipes and CI output stay line-based.
import type { SingleBar as Bar } from 'cli-progress';
import type { Progress } from '../protocol/progress';

const REFRESH_MS = 200;

export interface ProgressSource {
  progress(): Progress & { processes: number; restoreFinished: boolean };
}

/** Starts the bar if stderr is a terminal; returns its stop (which leaves the final state drawn). */
export function startProgressBar(source: ProgressSource, stream: NodeJS.WriteStream = process.stderr): () => void {
  if (!stream.isTTY) return () => undefined;
  // Loaded only for a terminal: start-up CPU is counted (docs/startup.md).
  const { SingleBar } = require('cli-progress') as { SingleBar: typeof Bar };
  const MiB = 256; // pages
  const bar = new SingleBar(
    {
      stream,
      format: 'faultline {bar} {percentage}% | {doneMiB}/{totalMiB} MiB | {rate} MiB/s | ETA {left} | {processes} processes, {faults} faults',
      hideCursor: true,
      clearOnComplete: false,
      fps: 1000 / REFRESH_MS,
      // the daemon's own log lines may share the terminal: keep the bar to one line
      linewrap: false,
    },
  );
  let started = false;
  let lastDone = 0;
  let lastAt = performance.now();
  let rate = 0;
  const tick = () => {
    const p = source.progress();
    // Nothing to show before the first process arrives.
    if (!started && p.total === 0) return;
    const now = performance.now();
    // The rate over the last half second or more: the fill's pace, not the restore's average.
    if (now - lastAt >= 500) {
      rate = (p.done - lastDone) / MiB / ((now - lastAt) / 1000);
      lastDone = p.done;
      lastAt = now;
    }
    const left = p.done >= p.total ? '0s' : rate > 0 ? `${((p.total - p.done) / MiB / rate).toFixed(1)}s` : '?';
    const payload = { doneMiB: (p.done / MiB).toFixed(0), totalMiB: (p.total / MiB).toFixed(0), rate: rate.toFixed(0), left, processes: p.processes, faults: p.faults };
    if (!started) {
      bar.start(p.total, p.done, payload);
      started = true;
      return;
    }
    bar.setTotal(p.total);
    bar.update(p.done, payload);
  };
  const timer = setInterval(tick, REFRESH_MS);
  timer.unref();
  return () => {
    clearInterval(timer);
    if (!started) return;
    tick();
    bar.stop();
  };
}
