/** The workflow id of a target's rotations: at most one runs per target, whatever surface starts it. */
export function rotationWorkflowId(target: string): string {
  return `kek-rotation-${target}`;
}
