import fs from 'node:fs';
import path from 'node:path';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils';
import { Worker } from '@temporalio/worker';
import { describe, expect, it } from 'vitest';
import { workflowBundle } from '../helpers/temporal';

// Histories recorded from released builds (test/workflows/histories/<commit>/): a rotation lives for days, so a
// worker deployed mid-rotation must replay what older builds wrote. Never edit or delete these files; add a folder
// per build whose workflow code changed (see "Deploys during a rotation" in docs/07-upgrading.md).
const root = path.join(__dirname, 'histories');
const recorded = fs
  .readdirSync(root)
  .flatMap((build) => fs.readdirSync(path.join(root, build)).map((file) => [build, file] as const))
  .filter(([, file]) => file.endsWith('.json'));

describe('workflow histories recorded from earlier builds replay on this build', () => {
  it('there are recorded histories to replay', () => {
    expect(recorded.length).toBeGreaterThanOrEqual(9);
  });

  it.each(recorded)('%s/%s', async (build, file) => {
    const history = historyFromJSON(JSON.parse(fs.readFileSync(path.join(root, build, file), 'utf8')));
    expect(history.events?.length).toBeGreaterThan(0);
    // Throws DeterminismViolationError (or any workflow task failure) if this build diverges from the recording.
    await Worker.runReplayHistory({ workflowBundle: workflowBundle() }, history, `${build}-${file}`);
  });
});
