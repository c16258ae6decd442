// Sign-in with an API token (checked against /api/v1/whoami, then kept in localStorage).

import { h } from '../dom.js';
import { t, lang, setLang } from '../i18n.js';

export function render(onSignedIn) {
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'current-password', required: true,
    placeholder: t('signin_token'), spellcheck: 'false',
  });
  const message = h('p', { class: 'error hidden', id: 'signin-error', role: 'alert' });
  const button = h('button', { type: 'submit', id: 'signin-submit', class: 'primary' }, t('signin_submit'));
  const form = h('form', {
    class: 'signin',
    onsubmit: async (e) => {
      e.preventDefault();
      button.disabled = true;
      message.classList.add('hidden');
      try {
        await onSignedIn(input.value.trim());
      } catch (err) {
        message.textContent = err.status === 401 ? t('signin_bad') : err.message;
        message.classList.remove('hidden');
      } finally {
        button.disabled = false;
      }
    },
  },
  h('h1', {}, t('app_title')),
  h('h2', {}, t('signin_title')),
  h('p', { class: 'hint' }, t('signin_hint')),
  h('label', { for: 'token' }, t('signin_token')),
  input,
  button,
  message,
  h('button', {
    type: 'button', class: 'link', id: 'lang',
    onclick: () => { setLang(lang() === 'zh' ? 'en' : 'zh'); location.reload(); },
  }, t('lang_switch')));
  setTimeout(() => input.focus(), 0);
  return h('div', { class: 'signin-wrap' }, form);
}
