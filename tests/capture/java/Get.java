// An HTTPS GET through an HTTP proxy with the JVM's default trust settings (javax.net.ssl.trustStore...).
import java.net.InetSocketAddress;
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class Get {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder()
            .proxy(ProxySelector.of(new InetSocketAddress("127.0.0.1", Integer.parseInt(args[1]))))
            .build();
        HttpResponse<String> response = client.send(HttpRequest.newBuilder(URI.create(args[0])).build(),
                                                    HttpResponse.BodyHandlers.ofString());
        System.out.println(response.statusCode() + " " + response.body());
    }
}
