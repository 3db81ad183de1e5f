// docs/02's table of a Mycelium migration's controls with the rekey CLI, as an operator types them: each line read
// from the page and run with its words unchanged (the target's shorthand `dek-migration-mycelium`, which names the
// target's migration in the database DATABASE_URL names), the server in TEMPORAL_ADDRESS, against a worker on the task
// queue the page names (`rekey`) while a migration runs. No other test ran these lines as written on a running
// migration (node scripts/docs-inline-commands.mjs listed them as run by none).
import { describe, expect, it } from 'vitest';
import type { MigrationReport } from '../../src/rotation/migration-report';
import { runRekey } from '../helpers/cli';
import { docPage } from '../helpers/readme';
import { queryUntil } from '../helpers/temporal';
import { useMyceliumMigrationWorker } from './mycelium-migration-worker';

/** The `rekey …` lines of docs/02's table of a migration's controls, as the page writes them. */
function controlLines(): string[] {
  const page = docPage('docs/02-worker-per-database.md');
  const at = page.indexOf('- **Controls**, the same words as for a rotation');
  expect(at, "docs/02's table of a migration's controls").toBeGreaterThan(0);
  const table = page.slice(at, page.indexOf('Underneath:', at));
  return [...table.matchAll(/^\s*\| `(rekey [^`]+)`/gm)].map((m) => m[1]!);
}

/** The status line docs/02's table gives as `rekey status`'s answer, its figures as any figures. */
function documentedStatusLine(): RegExp {
  const row = /^\s*\| `rekey status [^`]+`[^|]*\| `([^`]+)`/m.exec(docPage('docs/02-worker-per-database.md'));
  expect(row, "docs/02's status row").not.toBeNull();
  const escaped = row![1]!.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(escaped.replace(/\d+/g, '\\d+'));
}

/** A line's words as a shell splits these: words and "quoted words". */
const words = (line: string) => [...line.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]!);

describe("docs/02's rekey CLI controls of a migration, as written", () => {
  const fixture = useMyceliumMigrationWorker();

  it("Finding (lines no test ran): docs/02's rekey status, pause, resume and abort of dek-migration-mycelium run as written on a running migration: status names it with the line the page shows (it showed 'v1 values done' where rekey status says 'v1 values moved'), pause and resume answer, and abort ends it with its report, aborted", async () => {
    const lines = controlLines();
    expect(lines.map((line) => words(line).slice(0, 2).join(' '))).toEqual([
      'rekey status',
      'rekey pause',
      'rekey resume',
      'rekey abort',
    ]);
    const [status, pause, resume, abort] = lines as [string, string, string, string];
    const rekey = (line: string) =>
      runRekey(words(line).slice(1), {
        PATH: process.env.PATH,
        DATABASE_URL: fixture.db.url,
        TEMPORAL_ADDRESS: fixture.env.address,
      });

    // A v1 value the migration must write, held by an application's open transaction (see the fixture).
    await fixture.holdValue();
    const started = await rekey('rekey migrate-dek --target mycelium');
    expect({ code: started.code, stderr: started.stderr }).toEqual({ code: 0, stderr: '' });
    const id = /started migration (dek-migration-mycelium\.[0-9a-f]{12})/.exec(started.stdout)?.[1];
    expect(id, started.stdout).toBeDefined();
    const handle = fixture.env.client.workflow.getHandle(id!);

    const asked = await rekey(status);
    expect({ line: status, code: asked.code, stderr: asked.stderr }).toEqual({ line: status, code: 0, stderr: '' });
    expect(asked.stdout).toContain(`migration ${id}`);
    expect(asked.stdout).toMatch(documentedStatusLine());
    for (const line of [pause, resume, pause]) {
      const answer = await rekey(line);
      expect({ line, code: answer.code, stderr: answer.stderr }).toEqual({ line, code: 0, stderr: '' });
    }
    // Paused: the part held by the lock stops at its batch once the application's transaction ends.
    await fixture.releaseValue();
    await queryUntil<MigrationReport>(handle, 'progress', (p) => p.paused && p.partsRunning === 0, {
      withinMs: 60_000,
    });
    const aborted = await rekey(abort);
    expect({ line: abort, code: aborted.code, stderr: aborted.stderr }).toEqual({ line: abort, code: 0, stderr: '' });
    const report = await queryUntil<MigrationReport>(handle, 'progress', (p) => p.outcome !== undefined, {
      withinMs: 60_000,
    });
    expect(report.outcome).toBe('aborted');
    expect(aborted.stdout).toContain('change window closed');
  });
});
