/**
 * Which process owns the client end of a TCP connection to 127.0.0.1 (Linux /proc): lets a test SIGKILL exactly
 * the worker whose request it is holding, so the kill certainly lands while that worker has a job in flight.
 */
import { readdir, readFile, readlink } from 'node:fs/promises';

/** The socket inode of the local TCP endpoint 127.0.0.1:`localPort` connected to port `remotePort`. */
async function socketInode(localPort: number, remotePort: number): Promise<string | undefined> {
  const hex = (port: number) => port.toString(16).toUpperCase().padStart(4, '0');
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = await readFile(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 10) continue;
      if (cols[1].endsWith(`:${hex(localPort)}`) && cols[2].endsWith(`:${hex(remotePort)}`)) return cols[9];
    }
  }
  return undefined;
}

/** The pid among `pids` holding the client socket 127.0.0.1:`clientPort` → `serverPort`, or undefined. */
export async function socketOwner(clientPort: number, serverPort: number, pids: readonly number[]): Promise<number | undefined> {
  const inode = await socketInode(clientPort, serverPort);
  if (!inode || inode === '0') return undefined;
  const target = `socket:[${inode}]`;
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = await readdir(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if ((await readlink(`/proc/${pid}/fd/${fd}`)) === target) return pid;
      } catch {
        // closed meanwhile
      }
    }
  }
  return undefined;
}
