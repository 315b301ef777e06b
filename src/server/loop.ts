/**
 * The one loop shape the server's background work shares (the scheduler's passes, the leader's sweeps,
 * GitHub's passes): `kick()` asks for a run; kicks that land while a run is under way are coalesced into
 * one more run after it; a failed run is reported and the loop goes on with the next kick. `stop()` ends the
 * loop and waits for the run in flight; `pause()` holds it (kicks are remembered) until `resume()`.
 */
export interface Loop {
  /** Asks for a run soon (coalesced with other kicks). */
  kick(): void;
  /** Whether a run is under way. */
  readonly busy: boolean;
  /** Resolves when no run is under way. */
  idle(): Promise<void>;
  /** Lets kicks run (loops start stopped) and kicks once. */
  start(): void;
  /** No runs after this; resolves once the run in flight ended. */
  stop(): Promise<void>;
  /** Holds runs until `resume()`; resolves once the run in flight ended. */
  pause(): Promise<void>;
  resume(): void;
}

export interface LoopOptions {
  /** Called with whatever a run threw (the loop itself goes on). */
  onError(e: unknown): void;
  /**
   * Start a run at the end of the current event-loop turn, so everything kicked in the same turn (a burst of
   * submissions) shares it. Default: at once.
   */
  atTurnEnd?: boolean;
}

export function makeLoop(run: () => Promise<void>, o: LoopOptions): Loop {
  let wanted = false;
  let running: Promise<void> | undefined;
  let stopped = true;
  let paused = false;
  const may = () => !stopped && !paused;

  function kick(): void {
    wanted = true;
    if (running || !may()) return;
    running = (async () => {
      if (o.atTurnEnd) await new Promise<void>((r) => setImmediate(r));
      while (wanted && may()) {
        wanted = false;
        try {
          await run();
        } catch (e) {
          o.onError(e);
        }
      }
    })().finally(() => {
      running = undefined;
      // A kick that landed after the loop's last check but before this ran found `running` still set.
      if (wanted && may()) kick();
    });
  }

  const idle = async (): Promise<void> => {
    while (running) await running;
  };

  return {
    kick,
    get busy() {
      return running !== undefined;
    },
    idle,
    start() {
      stopped = false;
      kick();
    },
    async stop() {
      stopped = true;
      await idle();
    },
    async pause() {
      paused = true;
      await idle();
    },
    resume() {
      paused = false;
      kick();
    },
  };
}
