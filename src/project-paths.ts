import fs from 'node:fs';
import path from 'node:path';

/** The project root, found from this file whether it runs from `src/` (tests) or `dist/src/` (built). */
export const projectRoot: string = (() => {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'migrations'))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`cannot find the rekey project root above ${__dirname}`);
    dir = parent;
  }
  return dir;
})();

export const migrationsDir = path.join(projectRoot, 'migrations');
