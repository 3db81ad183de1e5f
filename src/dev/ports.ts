// Ports for the servers the tests, the demo and the benchmarks start. A port is never "found free, closed, then
// given to a server": another process can take it in between. A server that can listen on port 0 does, and the port
// is read from the server itself: its own output, or its own listening sockets (`listeningPorts`). The one server that
// must be given a number (the temporal CLI's dev server, for its frontend and its Web UI) is given one outside the
// kernel's ephemeral range (`portToTry`) and started again on another when it exits because the port was taken.
import fs from 'node:fs';

/**
 * The TCP ports process `pid` listens on, read from Linux's /proc: the socket inodes among its open files, matched
 * against the listening sockets of /proc/net/tcp and tcp6. Nothing is bound or probed, so nothing can race: a port
 * listed here is held by that process. Empty when the process is gone.
 */
export function listeningPorts(pid: number): number[] {
  const inodes = new Set<string>();
  let fds: string[];
  try {
    fds = fs.readdirSync(`/proc/${pid}/fd`);
  } catch {
    return [];
  }
  for (const fd of fds) {
    try {
      const match = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (match) inodes.add(match[1]!);
    } catch {
      // closed meanwhile
    }
  }
  const ports = new Set<number>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = fs.readFileSync(table, 'utf8');
    } catch {
      continue; // no IPv6 on this machine
    }
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      const fields = line.trim().split(/\s+/);
      const [local, state, inode] = [fields[1], fields[3], fields[9]];
      if (state !== '0A' || !local || !inode || !inodes.has(inode)) continue; // 0A: LISTEN
      ports.add(parseInt(local.slice(local.lastIndexOf(':') + 1), 16));
    }
  }
  return [...ports].sort((a, b) => a - b);
}

/** The kernel's ephemeral range (what port 0 and outgoing connections are given): 32768–60999 unless configured. */
function ephemeralRange(): [number, number] {
  try {
    const [low, high] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/);
    if (Number(low) > 0 && Number(high) >= Number(low)) return [Number(low), Number(high)];
  } catch {
    // not Linux: its usual default
  }
  return [32768, 60999];
}

/**
 * A random unprivileged port outside the kernel's ephemeral range, for a server that must be given a number: no
 * server listening on port 0 and no outgoing connection is ever given one of these, so only another program that
 * names ports itself can hold it. Nothing checks that it is free (that check would be the race): the caller starts
 * its server on it and, when the server says the address is in use, tries another.
 */
export function portToTry(random: () => number = Math.random): number {
  const [low, high] = ephemeralRange();
  const below = Math.max(0, low - 1025); // 1025 .. low-1
  const above = Math.max(0, 65535 - high); // high+1 .. 65535
  if (below + above === 0) return 1025 + Math.floor(random() * (65535 - 1025 + 1));
  const n = Math.floor(random() * (below + above));
  return n < below ? 1025 + n : high + 1 + (n - below);
}

/** Whether a server's output says it could not listen because its address was taken. */
export function addressInUse(output: string): boolean {
  return /address already in use|EADDRINUSE/i.test(output);
}
