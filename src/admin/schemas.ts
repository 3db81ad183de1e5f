// Schema pieces every admin route shares.
export const errorBody = {
  type: 'object',
  properties: { error: { type: 'string' }, message: { type: 'string' }, op_id: { type: 'string' } },
  required: ['error', 'message'],
} as const;

export const opIdParams = {
  type: 'object',
  properties: { op_id: { type: 'string', minLength: 1, maxLength: 200 } },
  required: ['op_id'],
} as const;
