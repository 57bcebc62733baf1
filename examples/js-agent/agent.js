// pr-summary-js: a BSM agent written in JavaScript.
//
// Summarises a pull request (or any text) for its reviewers through the
// host's LLM, and turns `ACTION: name {json}` lines of the answer into
// actions. The same contract as the Rust agents (wit/ in the repository):
// built into a WebAssembly component by componentize-js, run by the host in
// the same sandbox, under the same budget and grants.

import { chat } from 'bsm:plugin/llm@0.1.0';
import { get } from 'bsm:plugin/config@0.1.0';
import { log } from 'bsm:plugin/log@0.1.0';

const ACTION = /^ACTION:\s*([a-z][a-z0-9_]*)\s*(\{.*\})?\s*$/;

export function describe() {
  return {
    id: 'pr-summary-js',
    name: 'PR summary (JavaScript)',
    version: '0.1.0',
    description: 'Summarises a pull request for its reviewers; written in JavaScript.',
    actions: ['label_pr'],
  };
}

export function run(input) {
  const payload = parsePayload(input.payload);
  const pr = payload.pull_request ?? {};
  const request = input.input.trim();
  if (!request && !pr.title) {
    throw invalidInput('nothing to summarise: the input is empty and the payload has no pull_request');
  }
  const system = get('system-prompt') ?? 'Summarise for reviewers in three bullet points.';
  const parts = [];
  if (pr.title) parts.push(`Pull request #${pr.number ?? '?'}: ${pr.title}`);
  if (pr.body) parts.push(`<description>\n${pr.body}\n</description>`);
  if (request) parts.push(`<input>\n${request}\n</input>`);

  let reply;
  try {
    reply = chat({
      messages: [
        { role: 'system', content: system },
        { role: 'user', content: parts.join('\n\n') },
      ],
      model: undefined,
      maxTokens: Number(get('max-tokens') ?? 400),
      temperature: 0.2,
      json: false,
    });
  } catch (e) {
    throw { tag: 'capability', val: `the LLM did not answer: ${describeLlmError(e)}` };
  }

  const actions = [];
  const lines = [];
  for (const line of reply.content.split('\n')) {
    const m = line.trim().match(ACTION);
    if (m) {
      actions.push({ name: m[1], args: m[2] ?? '{}' });
    } else {
      lines.push(line);
    }
  }
  log('debug', 'pr-summary-js', `answered with ${actions.length} action(s)`);
  return {
    text: lines.join('\n').trim(),
    actions,
    metadata: JSON.stringify({
      model: reply.model,
      promptTokens: reply.usage.promptTokens,
      completionTokens: reply.usage.completionTokens,
      language: 'javascript',
    }),
  };
}

function parsePayload(text) {
  try {
    const value = JSON.parse(text || '{}');
    return value && typeof value === 'object' ? value : {};
  } catch (e) {
    throw invalidInput(`the payload is not JSON: ${e.message}`);
  }
}

function invalidInput(message) {
  return { tag: 'invalid-input', val: message };
}

// An imported function's `err` arrives as an exception whose payload is the
// WIT variant: `{ tag: 'timeout' }`, `{ tag: 'circuit-open', val: 1200 }`...
function describeLlmError(e) {
  const p = e?.payload ?? e;
  if (p?.tag === undefined) return String(e);
  return p.val === undefined ? p.tag : `${p.tag}: ${typeof p.val === 'object' ? JSON.stringify(p.val) : p.val}`;
}
