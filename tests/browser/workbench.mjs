// Drives a real VS Code workbench (code-server) in Debian's Chromium, as a user would.
//
// Run by tests/tests/browser.rs as the lab user on the laptop, with node:
//
//   node workbench.mjs --playwright DIR --url URL [--socks PORT] [--password-file F] --expect NAME... \
//       --edit FILE --text TEXT --command CMD --screenshot PNG
//
// With --socks, Chromium reaches the workbench only through the SOCKS port of the emulated
// Remote-SSH client's `ssh -D`: nothing on the laptop listens on the workbench's port.
// With --password-file, code-server's login page comes first and gets the password in F.
//
// Every observation goes to stdout as one line, `WORD VALUE`, for the test to check:
//   workbench          the workbench rendered
//   explorer NAME      a name the file explorer lists (one line each)
//   saved FILE         the editor saved FILE (its tab is no longer dirty)
//   terminal LINE      the integrated terminal's rows after CMD ran (one line each)
//   screenshot PATH    the PNG written
//   done
// On failure: `error MESSAGE` and exit status 1. Every wait is bounded.

import { createRequire } from 'node:module';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({
  options: {
    playwright: { type: 'string' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    url: { type: 'string' },
    socks: { type: 'string' },
    'password-file': { type: 'string' },
    expect: { type: 'string', multiple: true, default: [] },
    edit: { type: 'string' },
    text: { type: 'string' },
    command: { type: 'string' },
    screenshot: { type: 'string' },
    'timeout-ms': { type: 'string', default: '90000' },
  },
});
for (const required of ['playwright', 'url', 'edit', 'text', 'command', 'screenshot']) {
  if (!opts[required]) fail(`--${required} is required`);
}
const STEP_TIMEOUT = Number(opts['timeout-ms']);

function say(word, value = '') {
  process.stdout.write(value === '' ? `${word}\n` : `${word} ${value}\n`);
}

function fail(message) {
  say('error', String(message).replace(/\s*\n\s*/g, ' | '));
  process.exit(1);
}

// A fresh profile for every run, on the laptop's own /tmp.
const profile = mkdtempSync(join(tmpdir(), 'vscode-slurm-chromium-'));

// The whole run is bounded too, whatever hangs: Chromium, the network, the workbench.
// (Playwright kills the Chromium it started when node exits.)
const watchdog = setTimeout(() => {
  rmSync(profile, { recursive: true, force: true });
  fail(`gave up after ${(6 * STEP_TIMEOUT) / 1000}s in total`);
}, 6 * STEP_TIMEOUT);
watchdog.unref();

// playwright-core lives outside this file's directory (installed by tests/install-vscode-deps).
const { chromium } = createRequire(join(opts.playwright, 'package.json'))('playwright-core');

class StepFailed extends Error {}

let page;

// A step that fails says which one it was, and leaves a picture of the page as it was then.
async function step(name, body) {
  try {
    return await body();
  } catch (err) {
    if (page) {
      const shot = await page.screenshot({ path: opts.screenshot, timeout: 10000 }).then(() => true, () => false);
      if (shot) say('screenshot', opts.screenshot);
    }
    throw new StepFailed(`${name}: ${err.message}`);
  }
}

let context;
try {
  context = await step('starting Chromium', () =>
    chromium.launchPersistentContext(profile, {
      executablePath: opts.chromium,
      headless: true,
      timeout: STEP_TIMEOUT,
      viewport: { width: 1440, height: 900 },
      args: [
        // With --socks (Remote-SSH's ssh -D): Chromium never proxies loopback unless told
        // to, and the workbench's 127.0.0.1 is the login node's, on the far side of the
        // SOCKS tunnel. Without it the URL is a port of the laptop's own (ssh -L).
        ...(opts.socks
          ? [`--proxy-server=socks5://127.0.0.1:${opts.socks}`, '--proxy-bypass-list=<-loopback>']
          : []),
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    }),
  );
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP_TIMEOUT);

  await step('loading the workbench', async () => {
    await page.goto(opts.url, { waitUntil: 'domcontentloaded', timeout: STEP_TIMEOUT });
    if (opts['password-file']) {
      const { readFileSync } = await import('node:fs');
      await page.locator('input[name=password]').fill(readFileSync(opts['password-file'], 'utf8').trim());
      await page.locator('input[type=submit]').click();
    }
    await page.locator('.monaco-workbench').waitFor({ state: 'visible' });
  });
  say('workbench');

  // (a) The explorer shows the folder's files, which were made on the compute node.
  const explorer = page.locator('.explorer-folders-view');
  await step('waiting for the file explorer', async () => {
    for (const name of opts.expect) {
      await explorer.locator('.monaco-list-row .label-name', { hasText: name }).first().waitFor({ state: 'visible' });
    }
  });
  for (const name of await explorer.locator('.monaco-list-row .label-name').allTextContents()) {
    say('explorer', name.trim());
  }

  // (c) Open a file from the explorer, type at its end, save with Ctrl+S.
  await step(`editing ${opts.edit}`, async () => {
    await explorer.locator('.monaco-list-row', { hasText: opts.edit }).first().dblclick();
    const tab = page.locator('.tabs-container .tab.active', { hasText: opts.edit });
    await tab.waitFor({ state: 'visible' });
    const editor = page.locator('.editor-instance .monaco-editor').first();
    await editor.locator('.view-lines').click();
    await page.keyboard.press('Control+End');
    await page.keyboard.type(opts.text);
    await page.locator('.tabs-container .tab.active.dirty', { hasText: opts.edit }).waitFor({ state: 'visible' });
    await page.keyboard.press('Control+S');
    await page.locator('.tabs-container .tab.active.dirty').waitFor({ state: 'detached' });
  });
  say('saved', opts.edit);

  // (b) An integrated terminal, through the command palette, runs the command.
  const rows = page.locator('.terminal-wrapper.active .xterm-rows > div');
  const rowTexts = async () =>
    (await rows.allTextContents()).map((r) => r.replace(/\u00a0/g, ' ').trimEnd());
  await step('opening a terminal', async () => {
    await page.keyboard.press('F1');
    const input = page.locator('.quick-input-widget input');
    await input.waitFor({ state: 'visible' });
    await input.fill('>Terminal: Create New Terminal');
    await page
      .locator('.quick-input-list .monaco-list-row', { hasText: 'Terminal: Create New Terminal' })
      .first()
      .waitFor({ state: 'visible' });
    await page.keyboard.press('Enter');
    await page.locator('.terminal-wrapper.active .xterm-rows').waitFor({ state: 'visible' });
    // The shell is ready when its prompt shows.
    await page.waitForFunction(
      () => [...document.querySelectorAll('.terminal-wrapper.active .xterm-rows > div')].some((r) =>
        /[$#]\s*$/.test(r.textContent.replace(/\u00a0/g, ' '))),
      null,
      { timeout: STEP_TIMEOUT },
    );
  });
  await step(`running \`${opts.command}\` in the terminal`, async () => {
    await page.locator('.terminal-wrapper.active .xterm').click();
    await page.keyboard.type(opts.command);
    await page.keyboard.press('Enter');
    // Done when a new prompt follows the command line.
    await page.waitForFunction(
      (command) => {
        const lines = [...document.querySelectorAll('.terminal-wrapper.active .xterm-rows > div')]
          .map((r) => r.textContent.replace(/\u00a0/g, ' ').trimEnd());
        const at = lines.findIndex((l) => l.endsWith(command));
        return at >= 0 && lines.slice(at + 1).some((l) => /[$#]$/.test(l));
      },
      opts.command,
      { timeout: STEP_TIMEOUT },
    );
  });
  for (const line of await rowTexts()) {
    if (line !== '') say('terminal', line);
  }

  // (d) What the user sees, as a picture.
  await step('taking the screenshot', () => page.screenshot({ path: opts.screenshot }));
  say('screenshot', opts.screenshot);

  await step('closing Chromium', () => context.close());
  context = undefined;
  say('done');
} catch (err) {
  say('error', String(err instanceof StepFailed ? err.message : err.stack).replace(/\s*\n\s*/g, ' | '));
  process.exitCode = 1;
} finally {
  // Chromium ends with the context; nothing of this run stays on the laptop.
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
