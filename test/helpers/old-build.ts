// The workflow code of an earlier build, bundled at test time from the repository's own history: `git archive` of
// that commit's src/ into a scratch directory, bundled against this checkout's node_modules. A worker running it is
// that build's worker; replacing it by one running workflowBundle() is a deploy in the middle of a run.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bundleWorkflowCode } from '@temporalio/worker';
import { projectRoot } from '../../src/project-paths';

const quiet = {
  log: () => undefined,
  trace: () => undefined,
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: (message: string) => console.error(message),
};

/** The bundled workflow code of `commit` (a full hash: history does not move), cached by it under node_modules/.cache. */
export async function workflowBundleOf(commit: string): Promise<{ code: string }> {
  const cached = path.join(projectRoot, 'node_modules', '.cache', 'rekey', `workflows-${commit}.js`);
  if (fs.existsSync(cached)) return { code: fs.readFileSync(cached, 'utf8') };
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), `rekey-build-${commit.slice(0, 7)}-`));
  try {
    // Fails with git's own message if this checkout lacks the commit (a shallow clone): the test needs its history.
    const archive = execFileSync('git', ['-C', projectRoot, 'archive', '--format=tar', commit, 'src'], {
      maxBuffer: 64 * 1024 * 1024,
    });
    execFileSync('tar', ['-x', '-C', scratch], { input: archive });
    fs.symlinkSync(path.join(projectRoot, 'node_modules'), path.join(scratch, 'node_modules'), 'dir');
    const { code } = await bundleWorkflowCode({
      workflowsPath: path.join(scratch, 'src', 'workflows', 'index.ts'),
      logger: quiet,
    });
    fs.mkdirSync(path.dirname(cached), { recursive: true });
    const temporary = `${cached}.${process.pid}.tmp`;
    fs.writeFileSync(temporary, code);
    fs.renameSync(temporary, cached);
    return { code };
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}
