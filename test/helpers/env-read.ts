// The environment variables rekey's sources read, found by reading the sources: what the processes' --help and the
// table in docs/08-production.md are checked against.
import fs from 'node:fs';
import path from 'node:path';
import { projectRoot } from '../../src/project-paths';

/** Every environment variable name the sources read: env.X, env['X'], a 'X' string, a zod schema's X: key. */
export function variablesRead(): string[] {
  const names = new Set<string>();
  const walk = (dir: string) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const file = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(file);
      else if (file.endsWith('.ts')) {
        const text = fs.readFileSync(file, 'utf8');
        const pattern =
          /env\??\.([A-Z][A-Z0-9_]+)|env\[['"`]([A-Z][A-Z0-9_]+)['"`]\]|['"`]((?:REKEY|AWS|MYC|TALOS|TEMPORAL|DATABASE|LOG|VAULT)_[A-Z0-9_]+)['"`]|^\s+([A-Z][A-Z0-9_]+): z\./gm;
        for (const m of text.matchAll(pattern)) names.add((m[1] ?? m[2] ?? m[3] ?? m[4])!);
      }
    }
  };
  walk(path.join(projectRoot, 'src'));
  // The demo's own settings, and the test-server and setup helpers under src/dev, are not the worker's or the API's.
  for (const name of [...names]) if (name.startsWith('REKEY_DEMO_')) names.delete(name);
  return [...names].sort();
}

/**
 * The entry that documents `name` among `listed` names: itself, or its family (`<PREFIX>_KEK_<id>`,
 * `<PREFIX>_CURRENT_KEK_ID`, `AWS_ENDPOINT_URL` for a service's endpoint, `AWS_ACCESS_KEY_ID` for the other
 * credentials); undefined when none does.
 */
export function documentedAs(name: string, listed: ReadonlySet<string>): string | undefined {
  const family = /^[A-Z]+_KEK_/.test(name)
    ? '<PREFIX>_KEK_<id>'
    : /_CURRENT_KEK_ID$/.test(name)
      ? '<PREFIX>_CURRENT_KEK_ID'
      : name.startsWith('AWS_ENDPOINT_URL')
        ? 'AWS_ENDPOINT_URL'
        : ['AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN'].includes(name)
          ? 'AWS_ACCESS_KEY_ID'
          : name;
  return listed.has(family) ? family : undefined;
}
