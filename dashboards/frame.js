// Per-frame batching: the one requestAnimationFrame callback of the page.
//
// Messages can arrive hundreds of times a second; touching the DOM or redrawing a
// chart for each would not keep up. Handlers therefore only update in-memory state
// and call schedule(task); each scheduled task runs once in the next frame, however
// often it was scheduled. While the tab is hidden the browser pauses frames, so the
// work simply waits (buffers are capped, so memory does not grow meanwhile).

const pending = new Set();
let requested = false;
// For scheduleAtMost: tasks waiting for their turn, and when each last ran.
const throttled = new Set();
const lastRun = new WeakMap();

/** Runs `task` once in the next animation frame (duplicates collapse). */
export function schedule(task) {
  pending.add(task);
  if (!requested) {
    requested = true;
    requestAnimationFrame(runFrame);
  }
}

function runFrame() {
  requested = false;
  const tasks = [...pending];
  pending.clear();
  for (const task of tasks) {
    // One failing view must not stop the others from drawing.
    try {
      task();
    } catch (err) {
      console.error("dashboard frame task failed", err);
    }
  }
}

/**
 * Like schedule(), but runs `task` at most once per `intervalMs`: for views whose
 * cost is layout of hundreds of table rows and whose reader gains nothing from
 * 60 updates a second (the latest-values table).
 */
export function scheduleAtMost(task, intervalMs) {
  if (throttled.has(task)) return;
  const since = performance.now() - (lastRun.get(task) ?? -Infinity);
  const run = () => {
    throttled.delete(task);
    lastRun.set(task, performance.now());
    task();
  };
  throttled.add(task);
  if (since >= intervalMs) schedule(run);
  else setTimeout(() => schedule(run), intervalMs - since);
}
