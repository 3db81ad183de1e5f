// Links into the Temporal Web UI, for every surface that prints one (the CLI, the admin API): REKEY_WEB_UI_URL, else
// the dev server's http://localhost:8233. Validated, so a typo is said at once rather than printed in every link.
import { ConfigError } from '../errors';

export const DEFAULT_WEB_UI_URL = 'http://localhost:8233';

/** REKEY_WEB_UI_URL without its trailing slashes; an http(s) URL, else ConfigError naming the variable. */
export function webUiBase(env: NodeJS.ProcessEnv = process.env): string {
  const value = env.REKEY_WEB_UI_URL?.trim() || DEFAULT_WEB_UI_URL;
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
    throw new ConfigError(
      `REKEY_WEB_UI_URL must be the Temporal Web UI's http(s) address, such as https://temporal.example.com (got '${value}')`,
    );
  }
  return value.replace(/\/+$/, '');
}

/** `<base>/namespaces/<namespace>/<page>`: page is `workflows/<id>` or `schedules/<id>`. */
export function webUiLink(env: NodeJS.ProcessEnv, namespace: string, page: string): string {
  return `${webUiBase(env)}/namespaces/${encodeURIComponent(namespace)}/${page}`;
}
