// Fires N identical chat completions at once through the gateway with the Node.js
// OpenAI SDK, buffered ("chat") or streamed ("stream"), and prints what each got.
// A streaming client prints "first <i>" as soon as its first chunk arrives, so the
// test can see events reach clients live while the upstream still holds the rest.
import OpenAI from "openai";

const [mode, baseURL, count] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "sk-node-test", maxRetries: 0 });
const request = {
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "Say hello from Node" }],
};

async function chat() {
  const completion = await client.chat.completions.create(request);
  return { id: completion.id, text: completion.choices[0].message.content };
}

async function stream(index) {
  const events = await client.chat.completions.create({ ...request, stream: true });
  const ids = new Set();
  let text = "";
  let chunks = 0;
  for await (const chunk of events) {
    if (chunks === 0) console.log(`first ${index}`);
    chunks += 1;
    ids.add(chunk.id);
    text += chunk.choices[0]?.delta?.content ?? "";
  }
  return { id: [...ids].join(","), text, chunks };
}

const results = await Promise.all(
  Array.from({ length: Number(count) }, (_, index) => (mode === "stream" ? stream(index) : chat())),
);
console.log("RESULT " + JSON.stringify(results));
