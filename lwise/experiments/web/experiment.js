/* L-WISE study page: consent, instructions, trials with class buttons, feedback in training
 * blocks, optional timed presentation, and at the end a CSV of the responses in the trials
 * format that lwise.humans.trials and lwise.experiments.analysis read (download, and an optional
 * POST to the configured endpoint).
 *
 * Plain ES2017, no modules (module scripts do not load from file://), nothing fetched: the
 * study settings come from study.js (window.LWISE_STUDY) and each trial list from
 * trials/<participant>.js (window.LWISE_TRIALS), added as a script tag.
 *
 * Response columns: participant, image, condition, response, correct (0/1), rt (milliseconds
 * from stimulus onset), trial, block, class, then source_block, phase, feedback, catch, set,
 * eps, stimulus, timed_out (no answer within the time limit: response "abstain"),
 * t_onset_ms and t_response_ms (since the first trial), started_at (ISO time).
 */
(function () {
  "use strict";

  var S = window.LWISE_STUDY;
  var COLUMNS = ["participant", "image", "condition", "response", "correct", "rt", "trial",
    "block", "class", "source_block", "phase", "feedback", "catch", "set", "eps", "stimulus",
    "timed_out", "t_onset_ms", "t_response_ms", "started_at"];
  var ABSTAIN = "abstain";

  var state = {
    participant: null, trials: [], index: 0, results: [], t0: null, startedAt: null,
    respond: null, csv: null
  };

  function $(id) { return document.getElementById(id); }

  function show(name) {
    var all = document.querySelectorAll(".screen");
    for (var i = 0; i < all.length; i++) all[i].classList.remove("active");
    $("screen-" + name).classList.add("active");
  }

  function fail(message) {
    $("error-text").textContent = message;
    show("error");
  }

  function wait(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, Math.max(0, ms || 0)); });
  }

  // Resolves after `ms` measured with animation frames, so a 17 ms presentation lasts the
  // frames it asks for rather than a timer's rounding.
  function frames(ms) {
    return new Promise(function (resolve) {
      var start = performance.now();
      function tick(now) {
        if (now - start >= ms - 1) resolve(); else requestAnimationFrame(tick);
      }
      requestAnimationFrame(tick);
    });
  }

  function loadImage(src) {
    return new Promise(function (resolve, reject) {
      var img = new Image();
      img.onload = function () { resolve(img); };
      img.onerror = function () { reject(new Error("image failed to load: " + src)); };
      img.src = src;
    });
  }

  // --- screens before the trials ---------------------------------------------------------------

  function setup() {
    if (!S) { fail("study.js is missing: this page must sit in its generated study folder."); return; }
    document.title = S.title;
    $("title").textContent = S.title;
    $("consent-text").textContent = S.consent;
    $("instructions-text").textContent = S.instructions;
    S.classes.forEach(function (c) {
      var li = document.createElement("li");
      li.textContent = c;
      $("class-list").appendChild(li);
    });
    $("agree").addEventListener("change", function () {
      $("consent-continue").disabled = !$("agree").checked;
    });
    $("consent-continue").addEventListener("click", function () { show("instructions"); });
    $("instructions-continue").addEventListener("click", function () { show("start"); });
    var fromUrl = new URLSearchParams(window.location.search).get("participant");
    $("participant-id").value = fromUrl || "";
    $("start").addEventListener("click", function () { start($("participant-id").value.trim()); });
    $("download").addEventListener("click", download);
    document.addEventListener("keydown", function (ev) {
      if (!S.keyboard || !state.respond) return;
      var n = parseInt(ev.key, 10);
      var buttons = $("choices").querySelectorAll("button");
      if (n >= 1 && n <= buttons.length && !buttons[n - 1].disabled) buttons[n - 1].click();
    });
  }

  function start(pid) {
    if (S.participants.indexOf(pid) < 0) {
      $("start-error").textContent = "Unknown participant ID " + JSON.stringify(pid) + ".";
      return;
    }
    $("start").disabled = true;
    var script = document.createElement("script");
    script.src = "trials/" + encodeURIComponent(pid) + ".js";
    script.onload = function () {
      var trials = (window.LWISE_TRIALS || {})[pid];
      if (!trials || !trials.length) { fail("trials/" + pid + ".js holds no trials for " + pid); return; }
      state.participant = pid;
      state.trials = trials;
      run().catch(function (err) { fail(String(err && err.message || err)); });
    };
    script.onerror = function () { fail("cannot load trials/" + pid + ".js"); };
    document.body.appendChild(script);
  }

  // --- trials ----------------------------------------------------------------------------------

  function blocksOf(trials) {
    var seen = [];
    trials.forEach(function (t) { if (seen.indexOf(t.block) < 0) seen.push(t.block); });
    return seen;
  }

  function renderChoices(trial) {
    var box = $("choices");
    box.innerHTML = "";
    var choices = trial.choices && trial.choices.length ? trial.choices : S.classes;
    choices.forEach(function (c, i) {
      var b = document.createElement("button");
      b.className = "choice";
      b.dataset.choice = c;
      b.textContent = (S.keyboard && i < 9 ? (i + 1) + ". " : "") + c;
      b.disabled = true;
      box.appendChild(b);
    });
    return box.querySelectorAll("button");
  }

  function ask(buttons, timeoutMs) {
    return new Promise(function (resolve) {
      var timer = null;
      function done(response, timedOut) {
        if (!state.respond) return;
        state.respond = null;
        if (timer) clearTimeout(timer);
        for (var i = 0; i < buttons.length; i++) buttons[i].disabled = true;
        resolve({ response: response, timedOut: timedOut, at: performance.now() });
      }
      state.respond = done;
      for (var i = 0; i < buttons.length; i++) {
        buttons[i].disabled = false;
        buttons[i].onclick = function (ev) { done(ev.currentTarget.dataset.choice, false); };
      }
      if (timeoutMs) timer = setTimeout(function () { done(ABSTAIN, true); }, timeoutMs);
    });
  }

  async function runTrial(trial, n, total) {
    $("progress").textContent = "Trial " + n + " of " + total;
    var img = $("stimulus");
    var buttons = renderChoices(trial);
    var feedback = $("feedback");
    feedback.textContent = "";
    feedback.className = "";
    var loaded = loadImage(trial.stimulus);
    $("fixation").style.visibility = "visible";
    await wait(S.fixation_ms);
    await loaded;
    img.src = trial.stimulus;
    $("fixation").style.visibility = "hidden";
    img.style.visibility = "visible";
    var onset = performance.now();
    var answer;
    if (trial.duration_ms > 0) {
      await frames(trial.duration_ms);
      img.style.visibility = "hidden";
      await wait(S.post_stimulus_ms);
      answer = await ask(buttons, S.response_timeout_ms);
    } else {
      answer = await ask(buttons, S.response_timeout_ms);
    }
    img.style.visibility = "hidden";
    var correct = answer.response === trial["class"];
    state.results.push({
      participant: state.participant, image: trial.image, condition: trial.condition,
      response: answer.response, correct: correct ? 1 : 0, rt: (answer.at - onset).toFixed(1),
      trial: trial.trial, block: trial.block, "class": trial["class"],
      source_block: trial.source_block, phase: trial.phase, feedback: trial.feedback,
      "catch": trial["catch"], set: trial.set, eps: trial.eps, stimulus: trial.stimulus,
      timed_out: answer.timedOut ? 1 : 0, t_onset_ms: (onset - state.t0).toFixed(1),
      t_response_ms: (answer.at - state.t0).toFixed(1), started_at: state.startedAt
    });
    if (trial.feedback) {
      img.style.visibility = "visible";
      feedback.className = correct ? "correct" : "incorrect";
      feedback.textContent = correct ? "Correct!" : (answer.timedOut ? "Too slow. " : "Incorrect. ")
        + (correct ? "" : "This was: " + trial["class"]);
      await wait(S.feedback_ms);
      img.style.visibility = "hidden";
      feedback.textContent = "";
    }
  }

  function blockBreak(block, blocks, trials) {
    var done = state.results.filter(function (r) { return r.block === block; });
    var taught = trials.some(function (t) { return t.block === block && t.feedback; });
    var next = blocks[blocks.indexOf(block) + 1];
    var nextTrial = trials.filter(function (t) { return t.block === next; })[0];
    $("break-title").textContent = "Block " + (blocks.indexOf(block) + 1) + " of " + blocks.length + " done";
    var text = "";
    if (taught && done.length) {
      var right = done.filter(function (r) { return r.correct; }).length;
      text += "You answered " + Math.round(100 * right / done.length) + "% correctly. ";
    }
    text += nextTrial && !nextTrial.feedback
      ? "In the next block you will not be told whether you were right."
      : "Take a short rest, then continue.";
    $("break-text").textContent = text;
    show("break");
    return new Promise(function (resolve) {
      $("continue").onclick = function () { $("continue").onclick = null; resolve(); };
    });
  }

  async function run() {
    var trials = state.trials;
    var blocks = blocksOf(trials);
    state.t0 = performance.now();
    state.startedAt = new Date().toISOString();
    show("trial");
    for (var i = 0; i < trials.length; i++) {
      await runTrial(trials[i], i + 1, trials.length);
      var next = trials[i + 1];
      if (next && next.block !== trials[i].block) {
        await blockBreak(trials[i].block, blocks, trials);
        show("trial");
      }
    }
    finish();
  }

  // --- the end: CSV download and optional POST ------------------------------------------------

  function cell(v) {
    if (v === null || v === undefined) return "";
    var s = String(v);
    return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  function toCsv(rows) {
    var lines = [COLUMNS.join(",")];
    rows.forEach(function (r) { lines.push(COLUMNS.map(function (c) { return cell(r[c]); }).join(",")); });
    return lines.join("\n") + "\n";
  }

  function fileName() {
    return "responses_" + state.participant + "_" + state.startedAt.replace(/[:.]/g, "-") + ".csv";
  }

  function download() {
    var blob = new Blob([state.csv], { type: "text/csv" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = fileName();
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  function finish() {
    state.csv = toCsv(state.results);
    var test = state.results.filter(function (r) { return !r.feedback && r.phase !== "calibration"; });
    var right = test.filter(function (r) { return r.correct; }).length;
    $("end-text").textContent = "You finished all " + state.results.length + " trials"
      + (test.length ? " (" + Math.round(100 * right / test.length) + "% correct without feedback)" : "")
      + ". Please download your responses and send the file to the experimenter.";
    show("end");
    if (S.post_endpoint) {
      $("post-status").textContent = "Sending responses...";
      fetch(S.post_endpoint, {
        method: "POST", headers: { "Content-Type": "text/plain" }, body: state.csv
      }).then(function (res) {
        $("post-status").textContent = res.ok ? "Responses sent." : "Sending failed: HTTP " + res.status;
      }).catch(function (err) {
        $("post-status").textContent = "Sending could not be confirmed (" + err + "); please download.";
      });
    }
  }

  setup();
})();
