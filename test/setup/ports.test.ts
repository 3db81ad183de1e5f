// No port is found free, closed, then handed to a server: servers listen on port 0 and say (or show) which port they
// got, and the one that must be given a number is started again on another when it finds it taken.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import { describe, expect, inject, it } from 'vitest';
import { DevServerExitedError, startDevServer } from '../../src/dev/dev-server';
import { listeningPorts, portToTry } from '../../src/dev/ports';
import { eventually } from '../helpers/eventually';

/** A socket holding a port on 127.0.0.1 (any: port 0) for the length of `use`. */
async function holding<T>(port: number, use: (port: number) => Promise<T>): Promise<T> {
  const blocker = net.createServer();
  await new Promise<void>((resolve, reject) => {
    blocker.once('error', reject);
    blocker.listen(port, '127.0.0.1', resolve);
  });
  try {
    return await use((blocker.address() as net.AddressInfo).port);
  } finally {
    await new Promise((resolve) => blocker.close(resolve));
  }
}

describe('ports of the servers the tests and the demo start', () => {
  it('listeningPorts reads the ports a process listens on from the process itself, and none of one that listens nowhere', async () => {
    const script = `const s = require('net').createServer().listen(0, '127.0.0.1', () => console.log(s.address().port));`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const idle = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
    try {
      let out = '';
      child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
      const port = await eventually('the child printing its port', () => Number(out.trim()) || undefined);
      expect(listeningPorts(child.pid!)).toEqual([port]);
      expect(listeningPorts(idle.pid!)).toEqual([]);
    } finally {
      child.kill();
      idle.kill();
      await Promise.all([once(child, 'exit'), once(idle, 'exit')]);
    }
    expect(listeningPorts(child.pid!)).toEqual([]);
  });

  it('portToTry never gives a port of the ephemeral range, where port 0 and outgoing connections are given theirs', () => {
    const [low, high] = fs
      .readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')
      .trim()
      .split(/\s+/)
      .map(Number) as [number, number];
    for (const r of [0, 0.25, 0.5, 0.75, 0.999999]) {
      const port = portToTry(() => r);
      expect(port).toBeGreaterThan(1024);
      expect(port).toBeLessThanOrEqual(65535);
      expect(port < low || port > high, `${port} is in ${low}-${high}`).toBe(true);
    }
  });

  it('a dev server given a port another program holds is started again on another, and holds its own', async () => {
    const { temporalCli } = inject('toolchain');
    await holding(0, async (taken) => {
      const tried: number[] = [];
      const server = await startDevServer({
        temporalCli,
        uiPort: 0,
        pickPort: () => {
          const port = tried.length === 0 ? taken : portToTry();
          tried.push(port);
          return port;
        },
      });
      try {
        expect(tried[0]).toBe(taken);
        expect(server.port).not.toBe(taken);
        const uiPort = Number(new URL(server.uiUrl!).port);
        expect(tried.slice(-2)).toEqual([server.port, uiPort]);
        expect(listeningPorts(server.process.pid!)).toEqual(expect.arrayContaining([server.port, uiPort]));
      } finally {
        await server.stop();
      }
    });
  });

  it('a dev server given a port by its caller that another program holds fails at once, saying so', async () => {
    const { temporalCli } = inject('toolchain');
    await holding(0, async (taken) => {
      const failure = await startDevServer({ temporalCli, port: taken }).catch((err: unknown) => err);
      expect(failure).toBeInstanceOf(DevServerExitedError);
      expect((failure as Error).message).toMatch(new RegExp(`${taken}.*address already in use`));
    });
  });
});
