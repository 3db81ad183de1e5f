import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

// Custom search attributes: operators find rotations in the Web UI with e.g. `RekeyPhase = "grace"`.
// The setup registers them on the dev server; the worker registers them on any other server it connects to.
export const RekeyPhase = defineSearchAttributeKey('RekeyPhase', SearchAttributeType.KEYWORD);
export const RekeyFromKek = defineSearchAttributeKey('RekeyFromKek', SearchAttributeType.KEYWORD);
export const RekeyToKek = defineSearchAttributeKey('RekeyToKek', SearchAttributeType.KEYWORD);
/** The keyspace a rotation works on (a target name). */
export const RekeyTarget = defineSearchAttributeKey('RekeyTarget', SearchAttributeType.KEYWORD);

export const REKEY_SEARCH_ATTRIBUTES = [RekeyPhase, RekeyFromKek, RekeyToKek, RekeyTarget];
