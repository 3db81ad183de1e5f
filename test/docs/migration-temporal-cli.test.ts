// docs/02's controls of a Mycelium migration with the plain `temporal` CLI, as an operator types them: the lines are
// read from the page, `<db>` filled in from what `rekey kek-status --target mycelium` prints, as the page says, and run
// in bash with the toolchain's `temporal` against a worker on the task queue the page names (`rekey`), the server named
// by TEMPORAL_ADDRESS (test/helpers/as-typed.ts).
import { describe, expect, it } from 'vitest';
import { runRekey } from '../helpers/cli';
import { docPage } from '../helpers/readme';
import { queryUntil } from '../helpers/temporal';
import { useMyceliumMigrationWorker } from './mycelium-migration-worker';
import { asTyped, operatorEnv, runLine } from '../helpers/as-typed';

/** The page's inline `temporal …` commands of the migration's controls, line breaks inside them joined. */
function migrationTemporalLines(): string[] {
  const prose = docPage('docs/02-worker-per-database.md');
  const at = prose.indexOf('With the `temporal` CLI: `temporal workflow start --type migrateDek');
  expect(at, "docs/02's temporal CLI lines for a migration").toBeGreaterThan(0);
  const sentence = prose.slice(at, prose.indexOf('The admin API has the same', at));
  return [...sentence.matchAll(/`(temporal [^`]+)`/g)].map((m) => m[1]!.replace(/\s*\n\s*/g, ' '));
}

/** Splits a shell line into arguments (single-quoted words kept whole). */
const shellWords = (line: string) => [...line.matchAll(/'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2]!);

describe("docs/02's temporal CLI lines for a migration, as written", () => {
  const fixture = useMyceliumMigrationWorker();

  it("Finding (lines no test ran): docs/02's `temporal workflow start --type migrateDek …` and `temporal workflow update execute … --name pauseMigration` run as written, <db> from rekey kek-status: the migration starts and the pause answers with its report, paused", async () => {
    const lines = migrationTemporalLines();
    expect(lines.map((line) => shellWords(line).slice(0, 3).join(' '))).toEqual([
      'temporal workflow start',
      'temporal workflow update',
    ]);
    // A v1 value the migration must write, held by an application's open transaction (see the fixture).
    await fixture.holdValue();

    // <db>: the 12 hex digits after the '.' of the workflow id rekey kek-status --target mycelium prints.
    const status = await runRekey(['kek-status', '--target', 'mycelium'], {
      PATH: process.env.PATH,
      DATABASE_URL: fixture.db.url,
    });
    expect(status.code, status.stderr).toBe(0);
    const dbId = /rotations run under the workflow id kek-rotation-mycelium\.([0-9a-f]{12})$/m.exec(status.stdout)?.[1];
    expect(dbId, status.stdout).toBeDefined();

    const temporal = async (line: string) => {
      const servers = { temporalAddress: fixture.env.address };
      const result = await runLine(asTyped(line, { '<db>': dbId! }, servers), operatorEnv(servers));
      expect(result.code, `${line}\n${result.stderr}`).toBe(0);
      return result;
    };
    const started = await temporal(lines[0]!);
    expect(started.stdout).toContain(`dek-migration-mycelium.${dbId}`);
    const handle = fixture.env.client.workflow.getHandle(`dek-migration-mycelium.${dbId}`);
    // The run is under way (its plan made) before the pause, as an operator pauses one.
    await queryUntil<{ phase: string }>(handle, 'progress', (p) => p.phase !== 'planning', { withinMs: 60_000 });
    const paused = await temporal(lines[1]!);
    expect(paused.stdout).toMatch(/\bpaused:true\b/);
    expect((await handle.describe()).status.name).toBe('RUNNING');
  });
});
